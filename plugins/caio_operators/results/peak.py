"""A peak search's result as table rows.

The Locust master writes ``<run>/load/peak/search.json`` after every measurement window
(``locust/caio_peak.py``: settings, status, the highest passing rate, each step's verdict and
every window judged). Harvest turns it into the ``runs`` columns ``max_sustainable_rps``,
``slo_ms``, ``slo_percentile`` and ``peak_search`` (the steps as JSON) and into per-window
``peak_*`` series in ``timeseries``, so the latency-throughput curve of the search and its
verdicts are in the warehouse like every other figure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from caio_operators import storage
from caio_operators.layout import RunLayout
from caio_operators.results import schema as sc

log = logging.getLogger(__name__)

STEP_FIELDS = ("step", "rate", "passed", "throughput_rps", "latency_ms", "error_rate",
               "windows", "reason")
WINDOW_SERIES = {"rate": sc.PEAK_OFFERED_RPS, "throughput_rps": sc.PEAK_THROUGHPUT_RPS,
                 "latency_ms": sc.PEAK_LATENCY_MS, "error_rate": sc.PEAK_ERROR_RATE}


def search_uri(layout: RunLayout) -> str:
    return storage.join(layout.load_dir, "peak", "search.json")


def read_search(layout: RunLayout, skipped: list[str]) -> dict[str, Any] | None:
    """The run's peak-search file, or None when it has none; an unreadable one is skipped
    (named in ``skipped``) rather than failing the harvest."""
    uri = search_uri(layout)
    if not storage.exists(uri):
        return None
    try:
        search = json.loads(storage.read_text(uri))
        if not isinstance(search, dict) or "steps" not in search:
            raise ValueError("not a peak search report (no steps)")
        return search
    except (ValueError, OSError) as exc:
        log.warning("skipping unreadable peak search file %s: %s", uri, exc)
        skipped.append(uri)
        return None


def steps_summary(search: Mapping[str, Any]) -> dict[str, Any]:
    """What ``runs.peak_search`` holds: status, reason and one entry per judged step."""
    return {"status": search.get("status"), "reason": search.get("reason", ""),
            "steps": [{k: step.get(k) for k in STEP_FIELDS} for step in search["steps"]]}


def _error_rate(window: Mapping[str, Any]) -> float:
    requests = int(window.get("requests") or 0)
    return int(window.get("errors") or 0) / requests if requests else float("nan")


def peak_series(run_id: str, search: Mapping[str, Any]) -> pd.DataFrame:
    """``timeseries`` rows: the ``peak_*`` figures of every judged window and each step's
    verdict, dimension ``step-<n>``."""
    rows: list[tuple[float, str, str, float]] = []
    first_ts: dict[int, float] = {}
    for w in search.get("windows", []):
        dim = f"step-{int(w['step'])}"
        first_ts.setdefault(int(w["step"]), float(w["ts"]))
        values = {**w, "error_rate": _error_rate(w)}
        for field, metric in WINDOW_SERIES.items():
            value = values.get(field)
            rows.append((float(w["ts"]), metric, dim,
                         float("nan") if value is None else float(value)))
    for step in search["steps"]:
        ts = first_ts.get(int(step["step"]))
        if ts is not None:
            rows.append((ts, sc.PEAK_STEP_PASSED, f"step-{int(step['step'])}",
                         1.0 if step["passed"] else 0.0))
    frame = pd.DataFrame(rows, columns=["ts", "metric", "dimension", "value"])
    frame = frame[frame["value"].notna()]
    return sc.conform("timeseries", pd.DataFrame({
        "run_id": run_id, "ts": pd.to_datetime(frame["ts"], unit="s", utc=True),
        "metric": frame["metric"], "dimension": frame["dimension"], "value": frame["value"]}))


def apply_search(tables: Mapping[str, pd.DataFrame],
                 search: Mapping[str, Any] | None) -> dict[str, pd.DataFrame]:
    """``tables`` with the peak search's runs columns and timeseries rows (unchanged when
    the run has no search)."""
    out = dict(tables)
    if search is None:
        return out
    runs = tables["runs"].copy()
    run_id = str(runs.at[0, "run_id"])
    runs.at[0, "max_sustainable_rps"] = float(search.get("max_sustainable_rps") or 0.0)
    runs.at[0, "slo_ms"] = float(search["slo_ms"])
    runs.at[0, "slo_percentile"] = float(search["slo_percentile"])
    runs.at[0, "peak_search"] = json.dumps(steps_summary(search), sort_keys=True)
    out["runs"] = sc.conform("runs", runs)
    series = peak_series(run_id, search)
    if not series.empty:
        out["timeseries"] = sc.conform(
            "timeseries", pd.concat([tables["timeseries"], series], ignore_index=True))
    return out
