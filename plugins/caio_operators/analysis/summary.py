"""Summary of one run from its warehouse rows: a small dict, a text table, a plain finding.

Pure: the ``runs`` row and the ``timeseries`` rows in, plain Python out. The saturation
finding groups intervals by the number of users running:

- an interval belongs to a users level when Locust reported that many users in it; the
  first interval of each level (the step itself) is dropped as a transition, and so is the
  last interval of the run (cut short);
- a level counts when at least ``min_intervals`` intervals remain; its throughput is the
  mean successful requests/s, its latency the median of the interval p50/p95;
- throughput *saturates* at level L when the next level adds no more than ``growth``
  (5 %) throughput while p95 latency still rises: more users then only queue.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import pandas as pd

from caio_operators.metrics import host
from caio_operators.results import schema as sc
from caio_operators.results.consolidate import run_slo_ms
from caio_operators.results.stats import MAX_SATURATED_SHARE, SATURATED_CPU_PCT

MIN_INTERVALS = 3
GROWTH = 0.05

FIGURE_FIELDS = ("run_id", "dag_id", "status", "reason", "target", "protocol", "model_name",
                 "model_version", "model_source", "weights", "signature", "load_shape",
                 "users", "workers", "replicas", "started_at", "ended_at", "duration_s",
                 "requests", "failures", "error_rate", "throughput_rps", "p50_ms", "p90_ms",
                 "p95_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms", "server_p50_ms",
                 "server_p99_ms", "peak_cpu_pct", "peak_memory_mb", "peak_gpu_pct",
                 "max_worker_cpu_pct",
                 "generator_saturated", "max_sustainable_rps", "slo_ms", "slo_percentile",
                 "fingerprint", "host_cpu_pct", "host_other_cpu_pct", "overlapping_runs",
                 "monitoring_coverage", "goodput_rps")


def plain(value: Any) -> Any:
    """A JSON-friendly scalar: NaN/NA -> None, numpy -> Python, timestamps -> ISO text."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | dt.datetime):
        return value.isoformat()
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _row(runs: pd.DataFrame | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(runs, pd.DataFrame):
        if runs.empty:
            raise ValueError("no runs row: the run is not in the warehouse; harvest it first")
        if len(runs) > 1:
            raise ValueError(f"expected one runs row, got {len(runs)}")
        return {str(k): v for k, v in runs.iloc[0].to_dict().items()}
    return dict(runs)


def _wide(timeseries: pd.DataFrame) -> pd.DataFrame:
    """Per-interval columns for dimension 'all': users, rates, client latencies."""
    wanted = [sc.USERS, sc.REQUEST_RATE_RPS, sc.FAILURE_RATE_RPS, sc.CLIENT_LATENCY_P50_MS,
              sc.CLIENT_LATENCY_P95_MS]
    rows = timeseries[(timeseries["dimension"] == sc.DIMENSION_ALL)
                      & timeseries["metric"].isin(wanted)]
    if rows.empty:
        return pd.DataFrame(columns=["ts", *wanted])
    wide = rows.pivot_table(index="ts", columns="metric", values="value", aggfunc="last")
    wide = wide.reindex(columns=wanted).sort_index().reset_index()
    return wide


def load_levels(timeseries: pd.DataFrame, min_intervals: int = MIN_INTERVALS
                ) -> list[dict[str, Any]]:
    """Throughput and latency per users level (see the module doc), sorted by users."""
    wide = _wide(timeseries)
    if wide.empty:
        return []
    wide[sc.USERS] = wide[sc.USERS].ffill()  # a missing history tick keeps the last count
    wide = wide[wide[sc.USERS].notna() & (wide[sc.USERS] > 0)
                & wide[sc.REQUEST_RATE_RPS].notna()].iloc[:-1]
    if wide.empty:
        return []
    step = wide[sc.USERS].ne(wide[sc.USERS].shift()).to_numpy()
    steady = wide[~step]
    levels = []
    for users, part in steady.groupby(sc.USERS, sort=True):
        if len(part) < min_intervals:
            continue
        rate = part[sc.REQUEST_RATE_RPS].to_numpy(float)
        fail = part[sc.FAILURE_RATE_RPS].fillna(0.0).to_numpy(float)
        levels.append({
            "users": int(cast(float, users)),  # the groupby key: a users count
            "intervals": len(part),
            "throughput_rps": float(np.mean(rate - fail)),
            "p50_ms": plain(part[sc.CLIENT_LATENCY_P50_MS].median()),
            "p95_ms": plain(part[sc.CLIENT_LATENCY_P95_MS].median()),
            "error_rate": float(fail.sum() / rate.sum()) if rate.sum() else None,
        })
    return levels


def saturation(levels: list[dict[str, Any]], growth: float = GROWTH) -> dict[str, Any]:
    """Where throughput stops growing while p95 keeps rising, stated in plain words."""
    if not levels:
        return {"saturated": None, "users": None, "throughput_rps": None,
                "finding": "Not enough steady intervals with a known number of users to judge "
                           "saturation."}
    if len(levels) == 1:
        lv = levels[0]
        return {"saturated": None, "users": lv["users"], "throughput_rps": lv["throughput_rps"],
                "finding": f"Only one load level ({lv['users']} users: "
                           f"{lv['throughput_rps']:.1f} req/s at p95 {_ms(lv['p95_ms'])}) was held "
                           "long enough, so saturation cannot be judged; run the staircase "
                           "load shape to find it."}
    for low, high in itertools.pairwise(levels):
        if low["throughput_rps"] <= 0 or low["p95_ms"] is None or high["p95_ms"] is None:
            continue
        gain = high["throughput_rps"] / low["throughput_rps"] - 1
        if gain <= growth and high["p95_ms"] > low["p95_ms"]:
            return {
                "saturated": True, "users": low["users"],
                "throughput_rps": low["throughput_rps"],
                "finding": f"Throughput saturates at about {low['throughput_rps']:.1f} req/s "
                           f"with {low['users']} users: going to {high['users']} users changed "
                           f"throughput by {gain:+.1%} while p95 latency rose from "
                           f"{_ms(low['p95_ms'])} to {_ms(high['p95_ms'])}. Users beyond "
                           f"{low['users']} only wait in the queue.",
            }
    top = levels[-1]
    return {"saturated": False, "users": top["users"], "throughput_rps": top["throughput_rps"],
            "finding": f"No saturation up to {top['users']} users: throughput grew by more "
                       f"than {growth:.0%} at every step, reaching {top['throughput_rps']:.1f} "
                       f"req/s at p95 {_ms(top['p95_ms'])}. Add higher steps to find the limit."}


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def generator_warning(summary: Mapping[str, Any]) -> str | None:
    """The warning for a run whose load generator was saturated (None otherwise)."""
    if not summary.get("generator_saturated"):
        return None
    peak = summary.get("max_worker_cpu_pct")
    at = f" (busiest worker at {peak:.0f}% of its core)" if peak is not None else ""
    return (f"Load generator saturated{at}: a Locust worker was at {SATURATED_CPU_PCT:.0f}% "
            f"CPU or more in over {MAX_SATURATED_SHARE:.0%} of the run, so it sent and timed "
            "requests late; these figures describe the load generator, not the model, and are "
            "not trustworthy. Add workers and run again.")


def host_warning(summary: Mapping[str, Any]) -> str | None:
    """The warning for a run that shared its machine during the load (None otherwise)."""
    other, overlaps = summary.get("host_other_cpu_pct"), summary.get("overlapping_runs")
    shared = other is not None and other > host.OTHER_CPU_LIMIT_PCT
    if not shared and not overlaps:
        return None
    parts = []
    if shared:
        parts.append(f"other processes used {other:.0f}% of a core on average during the "
                     f"load (limit {host.OTHER_CPU_LIMIT_PCT:g}%; the whole machine "
                     f"{summary.get('host_cpu_pct') or 0:.0f}%)")
    if overlaps:
        parts.append(f"the load of caio run(s) {overlaps} overlapped this one's")
    return ("Shared machine: " + "; ".join(parts) + ". The figures are lower than the "
            "machine gives one benchmark: run it again alone.")


def peak_finding(summary: Mapping[str, Any]) -> str | None:
    """The finding of a peak search (None for other runs)."""
    search = summary.get("peak")
    if not search:
        return None
    best = summary.get("max_sustainable_rps") or 0.0
    slo = (f"p{summary.get('slo_percentile'):g} under {summary.get('slo_ms'):g} ms"
           if summary.get("slo_ms") is not None else "the SLO")
    failed = sorted(s["rate"] for s in search["steps"] if not s["passed"])
    above = f"; {failed[0]:.4g} req/s fails" if failed and failed[0] > best else ""
    if search.get("status") != "converged":
        return (f"Peak search cut short ({search.get('reason')}): {best:.4g} req/s is the "
                f"highest rate shown to keep {slo}{above}; give it a longer duration_s.")
    if not best:
        return f"No rate tried kept {slo}: {search.get('reason')}."
    return f"Sustains {best:.4g} req/s with {slo}{above} ({search.get('reason')})."


def summarize(runs: pd.DataFrame | Mapping[str, Any], timeseries: pd.DataFrame,
              min_intervals: int = MIN_INTERVALS, growth: float = GROWTH) -> dict[str, Any]:
    """The run's key figures, its users levels and the saturation finding (JSON-friendly)."""
    row = _row(runs)
    out = {name: plain(row.get(name)) for name in FIGURE_FIELDS}
    # open-loop runs have one scheduler "user" per worker: no users levels to compare
    open_loop = row.get("load_shape") in ("open_rate", "peak_search")
    levels = [] if open_loop else load_levels(timeseries, min_intervals)
    sat = saturation(levels, growth)
    out["levels"] = levels
    out["saturation"] = sat
    out["peak"] = _peak_json(row.get("peak_search"))
    out["finding"] = peak_finding(out) or sat["finding"]
    out["warning"] = generator_warning(out)
    # goodput counts requests within the run's slo_ms param (results/stats.goodput_rps)
    out["goodput_slo_ms"] = run_slo_ms(row.get("params"))
    out["has_gpu_metrics"] = bool((timeseries["metric"] == sc.GPU_UTILIZATION_PCT).any()) \
        if not timeseries.empty else False
    return out


def _peak_json(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "steps" in value else None


def peak_steps_text(search: Mapping[str, Any]) -> list[str]:
    """The steps of a peak search as fixed-width lines."""
    lines = [f"{'step':>5}{'rate':>10}{'verdict':>9}{'req/s':>10}{'lat ms':>10}{'errors':>9}"
             f"{'windows':>9}  reason"]
    for st in search["steps"]:
        err = "-" if st.get("error_rate") is None else f"{st['error_rate']:.1%}"
        lines.append(f"{st['step']:>5}{st['rate']:>10.4g}{'pass' if st['passed'] else 'FAIL':>9}"
                     f"{st['throughput_rps']:>10.4g}{_num(st.get('latency_ms')):>10}{err:>9}"
                     f"{st['windows']:>9}  {st['reason']}")
    return lines


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def summary_text(summary: Mapping[str, Any]) -> str:
    """A fixed-width text table of the summary, for the task log."""
    s = summary
    reason = f" - {s['reason']}" if s.get("reason") else ""
    error_rate = "-" if s.get("error_rate") is None else f"{s['error_rate']:.2%}"
    lines = [
        f"run         {s.get('run_id')}  [{s.get('status')}]{reason}",
        f"model       {s.get('model_name')}:{s.get('model_version')}  "
        f"source {s.get('model_source')}  weights {s.get('weights')}",
        f"target      {s.get('target')} ({s.get('protocol')})  replicas {s.get('replicas')}  "
        f"signature {s.get('signature')}",
        f"load        {s.get('load_shape')}  users {s.get('users')}  "
        f"workers {s.get('workers')}  duration {_num(s.get('duration_s'))} s",
        f"requests    {s.get('requests')}  failures {s.get('failures')}  "
        f"error rate {error_rate}",
        f"throughput  {_num(s.get('throughput_rps'), '{:.2f}')} req/s (steady window)",
        *([f"goodput     {_num(s['goodput_rps'], '{:.2f}')} req/s within "
           f"{_num(s.get('goodput_slo_ms'), '{:g}')} ms (steady window)"]
          if s.get("goodput_rps") is not None else []),
        "",
        f"{'latency ms':<12}{'p50':>9}{'p90':>9}{'p95':>9}{'p99':>9}{'p99.9':>9}{'max':>9}"
        f"{'mean':>9}",
        f"{'client':<12}" + "".join(f"{_num(s.get(k)):>9}" for k in (
            "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")),
        f"{'server':<12}{_num(s.get('server_p50_ms')):>9}{'':>9}{'':>9}"
        f"{_num(s.get('server_p99_ms')):>9}",
        "",
        f"peak CPU    {_num(s.get('peak_cpu_pct'), '{:.0f}')} % of a core (busiest replica)  "
        f"peak memory {_num(s.get('peak_memory_mb'), '{:.0f}')} MB",
        f"peak GPU    {_num(s.get('peak_gpu_pct'), '{:.0f}')} % duty cycle (busiest GPU)",
        f"load gen    max worker CPU {_num(s.get('max_worker_cpu_pct'), '{:.0f}')} % of a core "
        f"(busiest Locust worker)",
        f"machine     CPU during the load {_num(s.get('host_cpu_pct'), '{:.0f}')} % of a core, "
        f"other processes {_num(s.get('host_other_cpu_pct'), '{:.0f}')} %, other caio loads: "
        f"{s.get('overlapping_runs') or 'none'}",
    ]
    if s.get("monitoring_coverage"):
        lines.append(f"monitoring  Cloud Monitoring series {s['monitoring_coverage']}")
    for warning in (generator_warning(s), host_warning(s)):
        if warning:
            lines += ["", f"WARNING     {warning}"]
    if s.get("peak"):
        lines += ["", f"peak search max sustainable {_num(s.get('max_sustainable_rps'), '{:.4g}')}"
                      f" req/s  (p{_num(s.get('slo_percentile'), '{:g}')} SLO "
                      f"{_num(s.get('slo_ms'), '{:g}')} ms)", *peak_steps_text(s["peak"])]
    levels = s.get("levels") or []
    if levels:
        lines += ["", f"{'users':>7}{'intervals':>11}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}"
                      f"{'errors':>9}"]
        for lv in levels:
            err = "-" if lv.get("error_rate") is None else f"{lv['error_rate']:.1%}"
            lines.append(f"{lv['users']:>7}{lv['intervals']:>11}{lv['throughput_rps']:>10.1f}"
                         f"{_num(lv['p50_ms']):>10}{_num(lv['p95_ms']):>10}{err:>9}")
    lines += ["", f"finding     {s.get('finding')}"]
    return "\n".join(lines)


def latest_run_summary(warehouse_uri: str, run_id: str | None = None,
                       **warehouse_options: Any) -> str:
    """Summary text of ``run_id`` (default: the latest run) from the warehouse, plus the
    report's location when the run's params name its bucket.

    Raises ``LookupError`` when the warehouse or the run does not exist.
    """
    import json

    from caio_operators.layout import RunLayout
    from caio_operators.results.warehouse import WarehouseError, open_warehouse

    warehouse = open_warehouse(warehouse_uri, **warehouse_options)
    try:
        if run_id is None:
            run_id = warehouse.latest_run_id()
            if run_id is None:
                raise LookupError(f"the warehouse {warehouse_uri} holds no runs yet")
        tables = warehouse.read_run(run_id)
    except WarehouseError as exc:
        raise LookupError(str(exc)) from exc
    if tables["runs"].empty:
        raise LookupError(f"run {run_id!r} is not in the warehouse {warehouse_uri}")
    text = summary_text(summarize(tables["runs"], tables["timeseries"]))
    try:
        bucket = json.loads(tables["runs"]["params"].iloc[0] or "{}").get("bucket")
    except (TypeError, ValueError, AttributeError):
        bucket = None
    if bucket:
        text += f"\nreport      {RunLayout(bucket, run_id).report_html}"
    return text
