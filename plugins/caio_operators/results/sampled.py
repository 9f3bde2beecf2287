"""Counts for runs whose raw records are a sample (``record_sample`` < 1).

With a sample, the raw client records hold every failure but only a share of the
successful requests, so counts and rates built from them would be too low. The workers'
HDR histogram records count every request (``ok``/``failed`` per interval and signature,
exactly), so this replaces the ``runs`` counts (``requests``, ``failures``, ``error_rate``,
``throughput_rps``) and the per-interval ``request_rate_rps`` / ``failure_rate_rps`` series
with theirs, and leaves goodput out (a sample cannot count it). Latency percentiles already
come from the histograms (``histogram_tables.apply_histograms``); the ``requests`` table keeps
the sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from caio_operators.results import schema as sc
from caio_operators.results import stats
from caio_operators.results.hdr import HistogramRecord

RATE_SERIES = (sc.REQUEST_RATE_RPS, sc.FAILURE_RATE_RPS)


def interval_counts(records: Sequence[HistogramRecord], interval_s: float,
                    signature: str | None = None) -> pd.DataFrame:
    """``ts`` (interval start, epoch s), ``ok`` and ``failed`` per ``interval_s``, every
    interval from the first to the last (empty ones as 0), all workers summed."""
    rows = [(math.floor(r.ts / interval_s) * interval_s, r.ok, r.failed) for r in records
            if signature is None or r.signature == signature]
    if not rows:
        return pd.DataFrame({"ts": pd.Series([], dtype=float),
                             "ok": pd.Series([], dtype="int64"),
                             "failed": pd.Series([], dtype="int64")})
    frame = pd.DataFrame(rows, columns=["ts", "ok", "failed"]).groupby("ts").sum()
    full = np.arange(frame.index.min(), frame.index.max() + interval_s / 2, interval_s)
    return frame.reindex(full, fill_value=0).rename_axis("ts").reset_index()


def throughput_rps(counts: pd.DataFrame, interval_s: float,
                   trim_fraction: float = stats.STEADY_TRIM_FRACTION) -> float:
    """Successful requests per second over the steady window (``stats.steady_window`` of
    the intervals' span, whole intervals inside it)."""
    if counts.empty:
        return math.nan
    span = np.array([counts["ts"].min(), counts["ts"].max() + interval_s])
    window = stats.steady_window(span, trim_fraction)
    if window is None:
        return math.nan
    inside = counts[(counts["ts"] >= window[0]) & (counts["ts"] + interval_s <= window[1])]
    if inside.empty:
        return math.nan
    return float(inside["ok"].sum() / (len(inside) * interval_s))


def _rate_rows(run_id: str, counts: pd.DataFrame, dimension: str,
               interval_s: float) -> pd.DataFrame:
    ts = pd.to_datetime(counts["ts"], unit="s", utc=True)
    parts = [pd.DataFrame({"run_id": run_id, "ts": ts, "metric": metric,
                           "dimension": dimension, "value": values / interval_s})
             for metric, values in ((sc.REQUEST_RATE_RPS, counts["ok"] + counts["failed"]),
                                    (sc.FAILURE_RATE_RPS, counts["failed"]))]
    return pd.concat(parts, ignore_index=True)


def apply_histogram_counts(tables: Mapping[str, pd.DataFrame],
                           records: Sequence[HistogramRecord],
                           interval_s: float = sc.DEFAULT_INTERVAL_S
                           ) -> dict[str, pd.DataFrame]:
    """``tables`` with the counts and rates taken from the histogram records (see the
    module docstring); unchanged when there are none."""
    out = dict(tables)
    if not records:
        return out
    counts = interval_counts(records, interval_s)
    requests, failures = int(counts["ok"].sum() + counts["failed"].sum()), int(
        counts["failed"].sum())
    runs = tables["runs"].copy()
    run_id = str(runs.at[0, "run_id"])
    runs.at[0, "requests"] = requests
    runs.at[0, "failures"] = failures
    runs.at[0, "error_rate"] = failures / requests if requests else math.nan
    runs.at[0, "throughput_rps"] = throughput_rps(counts, interval_s)
    # the histograms count outcomes per interval, not latencies against the SLO: a goodput
    # from the sample would be too low, so there is none
    runs.at[0, "goodput_rps"] = math.nan
    out["runs"] = sc.conform("runs", runs)
    parts = [_rate_rows(run_id, counts, sc.DIMENSION_ALL, interval_s)]
    signatures = sorted({r.signature for r in records})
    if len(signatures) > 1:
        parts += [_rate_rows(run_id, interval_counts(records, interval_s, sig), sig, interval_s)
                  for sig in signatures]
    timeseries = tables["timeseries"]
    kept = timeseries[~timeseries["metric"].isin((*RATE_SERIES, sc.GOODPUT_RPS))]
    merged = pd.concat([df for df in (kept, *parts) if not df.empty], ignore_index=True)
    out["timeseries"] = sc.conform("timeseries", merged.sort_values(
        ["metric", "dimension", "ts"], kind="stable", ignore_index=True))
    return out
