"""Reports across runs: a sweep's comparison report and the history report.

Both read only the warehouse (``runs``, ``timeseries``, ``verdicts``) and write one
self-contained HTML file (inline CSS, interactive charts with their data and the charting
library embedded once, escaped text) plus a JSON twin:

- ``<bucket>/sweeps/<sweep_id>/comparison.html``: the variants ranked by max req/s under
  the SLO (the peak search's max sustainable throughput, or the measured throughput when no
  peak search ran, marked so), latency-throughput curves overlaid per variant, cost per
  1,000 predictions, and the verdict of each variant against the first one;
- ``<bucket>/reports/history.html``: per model and benchmark fingerprint (never mixing
  runs that measured different things), the trend of p95/p99, throughput and cost over the
  runs of ``caio_load_test``, regressions marked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from caio_operators import storage
from caio_operators.analysis import charts
from caio_operators.analysis.charts import Chart, Series
from caio_operators.analysis.page import document, e, fmt
from caio_operators.analysis.page import table as html_table
from caio_operators.analysis.summary import load_levels, plain
from caio_operators.analysis.verdicts import MAX_SUSTAINABLE, judge_run, run_row
from caio_operators.layout import comparison_uri, history_uri

log = logging.getLogger(__name__)


def rank_variants(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` best first, each with ``rank`` and ``capacity_rps``/``capacity_basis``:
    max sustainable req/s when every run has it, else the measured throughput. Runs that
    failed (or measured nothing) come last, unranked."""
    peak = all(r.get(MAX_SUSTAINABLE) is not None for r in rows)
    basis = MAX_SUSTAINABLE if peak else "throughput_rps"
    out = [{**r, "capacity_rps": r.get(basis), "capacity_basis": basis} for r in rows]
    good = [r for r in out if r.get("status") != "failed" and r["capacity_rps"]]
    bad = [r for r in out if r not in good]
    good.sort(key=lambda r: (-r["capacity_rps"], r.get("p95_ms") or float("inf")))
    for i, r in enumerate(good, 1):
        r["rank"] = i
    for r in bad:
        r["rank"] = None
    return good + bad


def curves_chart(curves: Mapping[str, list[dict[str, Any]]]) -> Chart:
    """Latency (p95) vs throughput, one toggleable curve per variant (a point per users
    level, or the run's one point)."""
    series = tuple(Series(name, [p["throughput_rps"] for p in points],
                          [p["p95_ms"] for p in points]) for name, points in curves.items())
    return Chart("curves", "Latency vs throughput per variant", "successful requests/s",
                 "p95 latency ms", series, empty="no variant measured anything",
                 caption="click a variant in the legend to hide or show it")


def bars_chart(key: str, names: Sequence[str], values: Sequence[float | None], ylabel: str,
               title: str) -> Chart:
    """One bar per name (a missing value: no bar)."""
    return Chart(key, title, "variant", ylabel,
                 (Series(ylabel, list(range(len(names))), list(values), kind="bars"),),
                 x_names=tuple(names), y_min=0.0, empty="no variant has a value", height=260)


def _page(title: str, sub: str, body: str, chart_list: Sequence[Chart]) -> str:
    head, scripts = charts.assets(chart_list)
    return document(title, f"<h1>{e(title)}</h1><p class='sub'>{e(sub)}</p>{body}", head,
                    scripts)


def compare_sweep(warehouse, specs: Sequence[Mapping[str, Any]], bucket: str, sweep: str,
                  judge_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Judge each variant against the first, rank them, write the comparison report.

    ``specs``: the variants' RunSpec dicts (the plan task's output); ``judge_options``:
    percentile, threshold and price options of ``verdicts.judge_run``. Returns a small
    dict: the ranking and the report's URI.
    """
    from caio_operators.sweep import sweep_varies

    options = dict(judge_options or {})
    rows, curves = [], {}
    first = specs[0]["run_id"]
    varied = sweep_varies(specs)
    for spec in specs:
        name = spec.get("extra", {}).get("variant") or spec["run_id"]
        run = run_row(warehouse, spec["run_id"])
        if run is None:
            rows.append({"variant": name, "run_id": spec["run_id"], "status": "failed",
                         "reason": "not harvested"})
            continue
        per_spec = {**options, "machine_type": spec.get("machine_type", ""),
                    "accelerator_type": spec.get("accelerator_type", ""),
                    "accelerator_count": spec.get("accelerator_count", 0),
                    "instances_per_request": spec.get("instances_per_request", 1)}
        # the first variant is judged by the usual rule; the others against it, differing
        # only in what the sweep varies
        judged = judge_run(warehouse, spec["run_id"],
                           baseline_run_id=None if spec["run_id"] == first else first,
                           varied=None if spec["run_id"] == first else varied, **per_spec)
        timeseries = warehouse.read_run(spec["run_id"])["timeseries"]
        levels = load_levels(timeseries)
        curves[name] = levels or ([{"throughput_rps": run["throughput_rps"],
                                    "p95_ms": run["p95_ms"]}]
                                  if run.get("throughput_rps") is not None else [])
        rows.append({"variant": name, **{k: plain(run.get(k)) for k in (
            "run_id", "status", "reason", "model_name", "model_version", "model_source",
            "replicas", "throughput_rps", "p50_ms", "p95_ms", "p99_ms", MAX_SUSTAINABLE)},
            "machine_type": spec.get("machine_type"), "target": spec.get("target"),
            "verdict": judged["verdict"] if spec["run_id"] != first else "baseline",
            "verdict_reason": judged["reason"], "cost_per_hour": judged["cost_per_hour"],
            "cost_per_1k": judged["cost_per_1k"], "cost_note": judged["cost_note"]})
    ranked = rank_variants(rows)
    basis = ranked[0]["capacity_basis"] if ranked else "throughput_rps"
    basis_text = ("max sustainable req/s under the SLO (peak search)"
                  if basis == MAX_SUSTAINABLE else
                  "measured req/s (no peak search ran: the SLO-bound maximum is unknown)")
    table = html_table(
        ["rank", "variant", "run", "model", "source", "replicas", "status", "req/s",
         "p50 ms", "p95 ms", "p99 ms", "max sustainable req/s", "cost/h", "cost per 1,000",
         "verdict vs first"],
        [[r.get("rank") or "-", r["variant"], r["run_id"],
          f"{r.get('model_name')}:{r.get('model_version')}", r.get("model_source"),
          r.get("replicas"), r.get("status"), fmt(r.get("throughput_rps"), "{:.2f}"),
          fmt(r.get("p50_ms")), fmt(r.get("p95_ms")), fmt(r.get("p99_ms")),
          fmt(r.get(MAX_SUSTAINABLE)), fmt(r.get("cost_per_hour"), "{:.4g}"),
          fmt(r.get("cost_per_1k"), "{:.4g}"), r.get("verdict", "-")] for r in ranked])
    verdict_table = html_table(["variant", "verdict", "figures"],
                           [[r["variant"], r.get("verdict", "-"), r.get("verdict_reason", "")]
                            for r in rows])
    names = [r["variant"] for r in ranked]
    curves_c = curves_chart(curves)
    capacity = bars_chart("capacity", names, [r.get("capacity_rps") for r in ranked], "req/s",
                          basis_text)
    cost = bars_chart("cost", names, [r.get("cost_per_1k") for r in ranked], "cost",
                      "Cost per 1,000 predictions")
    cost_notes = "; ".join(f"{r['variant']}: {r['cost_note']}" for r in rows
                           if r.get("cost_note"))
    body = (
        f"<h2>Ranking</h2><p>Ranked by {e(basis_text)}.</p>{table}"
        f"<h2>Latency vs throughput</h2>{charts.figure(curves_c)}"
        f"<h2>Max req/s</h2>{charts.figure(capacity)}"
        f"<h2>Cost per 1,000 predictions</h2>{charts.figure(cost)}"
        f"<p class='sub'>{e(cost_notes)}</p>"
        f"<h2>Verdicts (each variant against {e(rows[0]['variant'])})</h2>{verdict_table}")
    uri = comparison_uri(bucket, sweep)
    storage.write_text(uri, _page(f"Sweep {sweep}", f"{len(specs)} variants", body,
                                  [curves_c, capacity, cost]))
    summary = {"sweep": sweep, "basis": basis, "ranking": [
        {k: r.get(k) for k in ("rank", "variant", "run_id", "status", "capacity_rps",
                               "p95_ms", "cost_per_1k", "verdict")} for r in ranked]}
    storage.write_text(uri.removesuffix(".html") + ".json",
                       json.dumps(summary, indent=2, default=str))
    log.info("sweep %s ranked: %s", sweep, [(r["rank"], r["variant"], r["capacity_rps"])
                                           for r in ranked])
    return {**summary, "report_uri": uri}


def with_fingerprints(history: pd.DataFrame) -> pd.DataFrame:
    """``history`` with every row's fingerprint (derived from the params of rows harvested
    before the column existed) and a ``benchmark_label`` naming the benchmark."""
    from caio_operators.results.consolidate import benchmark_columns

    history = history.copy()
    missing = history["fingerprint"].isna()
    history.loc[missing, "fingerprint"] = [
        benchmark_columns(p, v)["fingerprint"] for p, v in
        zip(history.loc[missing, "params"], history.loc[missing, "provenance"], strict=True)]
    history["fingerprint"] = history["fingerprint"].fillna("unknown")
    history["benchmark_label"] = [f"{t}/{s} [{str(f)[:6]}]" for t, s, f in zip(
        history["target"], history["load_shape"], history["fingerprint"], strict=True)]
    return history


#: the history's charts: (key, title, axis label, columns)
HISTORY_PANELS = (("history_latency", "Latency per run", "latency ms", ("p95_ms", "p99_ms")),
                  ("history_throughput", "Throughput per run", "req/s", ("throughput_rps",)),
                  ("history_cost", "Cost per 1,000 predictions per run", "cost per 1,000",
                   ("cost_per_1k",)))


def history_charts(history: pd.DataFrame) -> list[Chart]:
    """p95/p99, throughput and cost per 1,000 over time, one toggleable line per model and
    benchmark fingerprint (versions follow each other along it; runs of different
    benchmarks never share a line), regressions as red points."""
    out = []
    when = (history["started_at"].map(lambda t: t.timestamp()) if len(history)
            else pd.Series(dtype=float))
    for key, title, label, columns in HISTORY_PANELS:
        series = []
        for (model, _), part in history.groupby(["model_name", "fingerprint"]):
            bench = part["benchmark_label"].iloc[0]
            for column in columns:
                series.append(Series(f"{model} {bench} {column}", when[part.index].tolist(),
                                     part[column].astype(float).tolist()))
        bad = history[history["verdict"] == "regression"]
        if len(bad):
            series.append(Series("regression", when[bad.index].tolist(),
                                 bad[columns[0]].astype(float).tolist(), kind="points",
                                 color="#d62728"))
        out.append(Chart(key, title, "run started", label, tuple(series), x_time=True,
                         empty="no run has this figure"))
    return out


def history_report(warehouse, bucket: str, dag_id: str = "caio_load_test") -> dict[str, Any]:
    """Write the history report of ``dag_id``'s runs (``*``: every DAG's); returns its URI,
    the number of runs and of regressions."""
    history = with_fingerprints(warehouse.history(dag_id))
    history["started_at"] = pd.to_datetime(history["started_at"], utc=True)
    rows = [[r.started_at, f"{r.model_name}:{r.model_version}", r.benchmark_label,
             r.run_id, r.status,
             fmt(plain(r.throughput_rps), "{:.2f}"), fmt(plain(r.p95_ms)),
             fmt(plain(r.p99_ms)), fmt(plain(r.cost_per_1k), "{:.4g}"), r.verdict or "-"]
            for r in history.itertuples()]
    chart_list = history_charts(history) if len(history) else []
    body = ("<h2>Trend</h2><p class='sub'>One line per model and benchmark fingerprint; "
            "click a legend entry to hide or show it, drag to zoom, double-click to reset."
            "</p>" + "".join(charts.figure(c) for c in chart_list)
            if len(history) else "<p>No runs yet.</p>")
    body += "<h2>Runs</h2>" + html_table(
        ["started", "model", "benchmark", "run", "status", "req/s", "p95 ms", "p99 ms",
         "cost per 1,000", "verdict"], rows)
    uri = history_uri(bucket)
    title = "History of all runs" if dag_id == "*" else f"History of {dag_id}"
    storage.write_text(uri, _page(title, f"{len(history)} runs", body, chart_list))
    log.info("history report of %d runs: %s", len(history), uri)
    return {"report_uri": uri, "runs": len(history),
            "regressions": int((history["verdict"] == "regression").sum())}
