"""A run's client latency from the workers' merged HDR histograms instead of raw records.

Applied to the tables ``consolidate.build_tables`` made, when a run has histograms.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import pandas as pd

from caio_operators.results import hdr, stats
from caio_operators.results import schema as sc
from caio_operators.results.series import long_rows, utc_index

#: client latency series that histograms (when a run has them) provide instead of raw records
HISTOGRAM_SERIES = {"p50_ms": sc.CLIENT_LATENCY_P50_MS, "p95_ms": sc.CLIENT_LATENCY_P95_MS,
                    "p99_ms": sc.CLIENT_LATENCY_P99_MS}
#: runs columns that histograms provide (``mean_ms`` stays the exact mean of the records)
HISTOGRAM_FIGURES = (*stats.SUMMARY_PERCENTILES, "max_ms")


def apply_histograms(tables: Mapping[str, pd.DataFrame],
                     records: Sequence[hdr.HistogramRecord],
                     interval_s: float = sc.DEFAULT_INTERVAL_S) -> dict[str, pd.DataFrame]:
    """``tables`` with the client latency percentiles taken from the workers' merged HDR
    histograms: the ``runs`` figures (p50..p999, max) and the per-interval
    ``client_latency_p*`` series (``all``, and per signature when there are several).

    Histograms hold every successful request of the run in bounded memory and merge
    exactly, so these are within 1% of the exact percentiles (never below them) whatever
    the run's length; counts, rates and errors still come from the raw records.
    ``interval_s`` must be a multiple of the histograms' interval (1 s) to be exact.
    """
    out = dict(tables)
    if not records:
        return out
    binned = [dataclasses.replace(r, ts=math.floor(r.ts / interval_s) * interval_s)
              for r in records]
    frame, whole = hdr.summarize(binned)
    runs = tables["runs"].copy()
    for name in HISTOGRAM_FIGURES:
        runs.at[0, name] = whole[name]
    out["runs"] = sc.conform("runs", runs)
    parts = [long_rows(frame, HISTOGRAM_SERIES, sc.DIMENSION_ALL)]
    signatures = sorted({r.signature for r in records})
    if len(signatures) > 1:
        parts += [long_rows(hdr.summarize(binned, sig)[0], HISTOGRAM_SERIES, sig)
                  for sig in signatures]
    series = pd.concat(parts, ignore_index=True)
    series = series[series["value"].notna()]
    run_id = str(runs.at[0, "run_id"])
    timeseries = tables["timeseries"]
    kept = timeseries[~timeseries["metric"].isin(list(HISTOGRAM_SERIES.values()))]
    added = pd.DataFrame({"run_id": run_id, "ts": utc_index(series["ts"]),
                          "metric": series["metric"].astype("str"),
                          "dimension": series["dimension"].astype("str"),
                          "value": series["value"].astype(float)})
    nonempty = [df for df in (kept, added) if not df.empty]
    merged = pd.concat(nonempty, ignore_index=True) if nonempty else kept
    merged = merged.sort_values(["metric", "dimension", "ts"], kind="stable",
                                ignore_index=True)
    out["timeseries"] = sc.conform("timeseries", merged)
    return out
