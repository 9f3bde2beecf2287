"""A run's verdict against its baseline, and its cost, read from and stored in the warehouse.

The glue around the pure :mod:`~caio_operators.analysis.compare` and
:mod:`~caio_operators.analysis.cost`: find the baseline run, read both runs' raw client
latencies from ``requests``, compare, price, and replace the run's rows in ``verdicts`` and
``comparisons``. Works the same on DuckDB and BigQuery (values are query parameters).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from caio_operators import benchmark as bm
from caio_operators.analysis import compare as cmp
from caio_operators.analysis import cost as costs
from caio_operators.analysis.summary import plain
from caio_operators.results import schema as sc
from caio_operators.results.stats import epoch_seconds, steady_window

log = logging.getLogger(__name__)

#: runs column of the peak search's result (added by the peak_search load shape)
MAX_SUSTAINABLE = "max_sustainable_rps"


_plain = plain  # JSON-friendly scalars, as in the summary


def run_row(warehouse, run_id: str) -> dict[str, Any] | None:
    """The ``runs`` row of ``run_id`` as a dict (None when absent)."""
    runs = warehouse.run_row(run_id)
    if runs.empty:
        return None
    return {k: _plain(v) for k, v in runs.iloc[0].to_dict().items()}



def run_benchmark(run: Mapping[str, Any]) -> dict[str, Any]:
    """A runs row's benchmark fields: its ``benchmark`` column, or (rows harvested before
    the column existed) derived from its params and provenance."""
    stored = _json_dict(run.get("benchmark"))
    if stored:
        return stored
    return bm.benchmark_fields(_json_dict(run.get("params")), _json_dict(run.get("provenance")))


def run_identity(run: Mapping[str, Any]) -> dict[str, Any]:
    """The model identity of a runs row (:data:`benchmark.IDENTITY`)."""
    params = _json_dict(run.get("params"))
    return {name: run.get(name) if run.get(name) is not None else params.get(name)
            for name in bm.IDENTITY}


def _json_dict(text: Any) -> dict[str, Any]:
    if isinstance(text, Mapping):
        return dict(text)
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Baseline:
    """How a run's baseline was found: the run to compare with (None when there is none),
    the rule, and when there is nothing to compare the verdict and why."""

    run_id: str | None
    rule: str
    verdict: str | None = None  # None: compare with run_id
    reason: str = ""


def find_baseline(warehouse, run: Mapping[str, Any], baseline_version: str = "") -> Baseline:
    """The latest successful run of ``baseline_version`` of the same model with the same
    fingerprint, or (no version named) the previous successful run of the same model,
    version, source and fingerprint, started before this one. None of them comparable:
    ``no comparable baseline``, naming the nearest run and the fields that differ."""
    # which candidate is comparable is decided here, in Python (benchmark.pick_baseline)
    found = warehouse.baseline_candidates(str(run["model_name"]), str(run["run_id"]))
    version = baseline_version or run["model_version"]
    found = found[found["model_version"] == version]
    if baseline_version:
        rule, identity = f"version:{baseline_version}", None  # another model on purpose
    else:
        rule, identity = "previous", run_identity(run)
        started = run.get("started_at")
        if started is None:
            return Baseline(None, rule, cmp.NO_BASELINE, "the run has no start time")
        found = found[pd.to_datetime(found["started_at"], utc=True)
                      < pd.Timestamp(started).tz_convert("UTC")]
    candidates = [bm.Candidate(str(r["run_id"]), _epoch(r["started_at"]), run_benchmark(r),
                               run_identity(r)) for r in found.to_dict("records")]
    choice = bm.pick_baseline(run_benchmark(run), candidates, identity)
    which = (f"of {run['model_name']}:{version}" if baseline_version else
             f"of {run['model_name']}:{version} before this one")
    if choice.run_id is not None:
        return Baseline(choice.run_id, rule)
    if choice.nearest is None:
        return Baseline(None, rule, cmp.NO_BASELINE, f"no earlier successful run {which}")
    return Baseline(None, rule, cmp.NO_COMPARABLE_BASELINE,
                    f"no successful run {which} measured the same benchmark; the nearest, "
                    f"{choice.nearest}, differs in {bm.describe(choice.diff)} (this run's "
                    "value first)")


def named_baseline(warehouse, run: Mapping[str, Any], baseline_run_id: str,
                   varied: Iterable[str] | None = None) -> Baseline:
    """``baseline_run_id`` as the baseline (``varied``: the fields a sweep varies, which may
    differ), or ``not comparable`` naming the other fields that differ."""
    rule = f"sweep:{baseline_run_id}" if varied is not None else f"run:{baseline_run_id}"
    base = run_row(warehouse, baseline_run_id)
    if base is None:
        raise ValueError(f"baseline run {baseline_run_id!r} is not in the warehouse "
                         f"{warehouse.uri}; name a run_id of its runs table")
    diff = bm.differences(run_benchmark(run), run_benchmark(base), ignore=varied or ())
    if diff:
        what = "the sweep's baseline" if varied is not None else "the named baseline"
        outside = " outside the fields the sweep varies" if varied is not None else ""
        return Baseline(baseline_run_id, rule, cmp.NOT_COMPARABLE,
                        f"{what} {baseline_run_id} measured another benchmark{outside}: "
                        f"{bm.describe(diff)} (this run's value first)")
    return Baseline(baseline_run_id, rule)


def _epoch(value: Any) -> float:
    return pd.Timestamp(value).timestamp()


def per_second_ok(ts: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Successful requests per whole one-second bin of the steady window (the window
    ``runs.throughput_rps`` uses): the samples of the throughput bootstrap."""
    window = steady_window(ts)
    if window is None:
        return np.array([], dtype=float)
    start, end = window
    n_bins = math.floor(end - start)
    if n_bins < 1:
        return np.array([], dtype=float)
    keep = ok & (ts >= start) & (ts < start + n_bins)
    bins = np.floor(ts[keep] - start).astype(np.int64)
    return np.bincount(bins, minlength=n_bins).astype(float)


def run_sample(warehouse, run: Mapping[str, Any]) -> cmp.RunSample:
    """The run's successful client latencies and per-second throughput, from ``requests``."""
    rows = warehouse.client_latencies(str(run["run_id"]))
    ok = rows["ok"].fillna(False).to_numpy(bool) if len(rows) else np.array([], bool)
    ts = epoch_seconds(rows["ts"]) if len(rows) else np.array([], float)
    latencies = rows["latency_ms"].to_numpy(float)[ok] if len(rows) else np.array([], float)
    return cmp.RunSample(run_id=str(run["run_id"]), latencies_ms=latencies,
                         per_second=per_second_ok(ts, ok),
                         max_sustainable_rps=run.get(MAX_SUSTAINABLE))


def run_cost(run: Mapping[str, Any], prices: costs.PriceTable, *, machine_type: str = "",
             accelerator_type: str = "", accelerator_count: int = 0,
             local_machine_type: str = "", instances_per_request: int = 1) -> dict[str, Any]:
    """Cost figures of one run (see :mod:`~caio_operators.analysis.cost`)."""
    per_hour, note = costs.hourly_cost(
        prices, target=str(run.get("target")), replicas=int(run.get("replicas") or 1),
        machine_type=machine_type, accelerator_type=accelerator_type,
        accelerator_count=accelerator_count, local_machine_type=local_machine_type)
    figures = costs.cost_figures(per_hour, max_sustainable_rps=run.get(MAX_SUSTAINABLE),
                                 throughput_rps=run.get("throughput_rps"),
                                 instances_per_request=instances_per_request)
    figures["cost_note"] = f"{note}; {figures['cost_note']}"
    figures["price_date"] = prices.taken
    return figures


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100.0


def verdict_frames(run_id: str, comparison: cmp.Comparison, baseline_run_id: str | None,
                   rule: str, percentile: str, threshold: float, cost: Mapping[str, Any],
                   now: dt.datetime | None = None) -> dict[str, pd.DataFrame]:
    """The ``verdicts`` row and the ``comparisons`` rows of one judged run."""
    now = now or dt.datetime.now(dt.UTC)
    verdict = pd.DataFrame([{
        "run_id": run_id, "baseline_run_id": baseline_run_id, "baseline_rule": rule,
        "verdict": comparison.verdict, "reason": comparison.reason, "percentile": percentile,
        "threshold_pct": threshold * 100.0, "cost_per_hour": cost.get("cost_per_hour"),
        "cost_per_1k": cost.get("cost_per_1k"), "cost_basis": cost.get("cost_basis"),
        "cost_basis_rps": cost.get("cost_basis_rps"), "cost_note": cost.get("cost_note"),
        "price_date": cost.get("price_date"), "analysed_at": now}])
    rows = [{"run_id": run_id, "baseline_run_id": baseline_run_id, "metric": r["metric"],
             "candidate": r["candidate"], "baseline": r["baseline"],
             "change_pct": _pct(r["change"]), "ci_low_pct": _pct(r["ci_low"]),
             "ci_high_pct": _pct(r["ci_high"]), "worse": r["worse"], "better": r["better"],
             "analysed_at": now} for r in comparison.rows]
    comparisons = pd.DataFrame(rows) if rows else sc.empty_frame("comparisons")
    return {"verdicts": sc.conform("verdicts", verdict),
            "comparisons": sc.conform("comparisons", comparisons)}


def judge_run(warehouse, run_id: str, *, baseline_version: str = "",
              baseline_run_id: str | None = None, varied: Iterable[str] | None = None,
              percentile: str = "p95",
              threshold: float = cmp.DEFAULT_THRESHOLD, price_table: str = "",
              machine_type: str = "", accelerator_type: str = "", accelerator_count: int = 0,
              local_machine_type: str = "", instances_per_request: int = 1,
              seed: int = 0) -> dict[str, Any]:
    """Compare ``run_id`` with its baseline (``baseline_run_id`` when given, e.g. a sweep's
    first variant with ``varied`` the fields the sweep varies, see :func:`named_baseline`;
    else :func:`find_baseline`), price it, store both in the warehouse.

    Returns a small dict: verdict, reason, baseline, cost figures.
    """
    run = run_row(warehouse, run_id)
    if run is None:
        raise ValueError(f"run {run_id!r} is not in the warehouse {warehouse.uri}; "
                         "harvest it first")
    if baseline_run_id:
        found = named_baseline(warehouse, run, baseline_run_id, varied)
    else:
        found = find_baseline(warehouse, run, baseline_version)
    if found.verdict is not None:
        comparison = cmp.Comparison(found.verdict, found.reason, [])
    else:
        baseline = run_row(warehouse, found.run_id) if found.run_id else None
        if baseline is None:
            raise ValueError(f"the baseline run {found.run_id!r} is not in the warehouse")
        comparison = cmp.compare_runs(
            run_sample(warehouse, run), run_sample(warehouse, baseline),
            percentile_name=percentile, threshold=threshold, seed=seed)
    baseline_run_id, rule = found.run_id, found.rule
    try:
        cost = run_cost(run, costs.load_price_table(price_table), machine_type=machine_type,
                        accelerator_type=accelerator_type, accelerator_count=accelerator_count,
                        local_machine_type=local_machine_type,
                        instances_per_request=instances_per_request)
    except costs.PriceTableError as exc:
        # a missing price must not hide the verdict: store it unpriced, say why
        log.warning("run %s not priced: %s", run_id, exc)
        cost = {"cost_note": f"not priced: {exc}"}
    frames = verdict_frames(run_id, comparison, baseline_run_id, rule, percentile, threshold,
                            cost)
    warehouse.replace_tables(frames, run_id)
    against = f"vs {baseline_run_id} ({rule} baseline)" if baseline_run_id else (
        f"with no {rule} baseline")
    log.info("verdict for run %s %s: %s - %s", run_id, against, comparison.verdict,
             comparison.reason)
    return {"run_id": run_id, "verdict": comparison.verdict, "reason": comparison.reason,
            "baseline_run_id": baseline_run_id, "baseline_rule": rule,
            **{k: cost.get(k) for k in ("cost_per_hour", "cost_per_1k", "cost_basis",
                                        "cost_basis_rps", "cost_note", "price_date")}}
