"""The local server's scaling records as ``timeseries`` rows: ``target_replicas``.

The supervisor writes one row per change (``targets/scaling.py``: ``ts, event,
from_replicas, to_replicas, reason``; ``event`` ``target`` or ``ready``). The autoscaler's
target count becomes a step series on the run's interval grid: each interval gets the count
in effect at its end (a change shows in the interval it happened in). ``replicas`` stays
what the samples say (replicas ready and serving, draining ones until they exit), which is
the same count the ``ready`` rows track.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from caio_operators import storage
from caio_operators.layout import RunLayout
from caio_operators.results import schema as sc
from caio_operators.results.readers import read_csv_files

SCALING_RECORD_COLUMNS: dict[str, pa.DataType] = {
    "ts": pa.float64(), "event": pa.string(), "from_replicas": pa.int64(),
    "to_replicas": pa.int64(), "reason": pa.string()}
TARGET_EVENT = "target"


def read_scaling(layout: RunLayout, skipped: list[str] | None = None) -> pd.DataFrame:
    """The run's scaling records, oldest first (none: an empty frame, e.g. a cloud run)."""
    uris = storage.list_files(layout.scaling_dir, ".csv")
    frame = read_csv_files(uris, SCALING_RECORD_COLUMNS, skipped)
    return frame.sort_values("ts", kind="stable", ignore_index=True)


def step_series(events: pd.DataFrame, interval_s: float, end_s: float) -> pd.DataFrame:
    """``ts, value``: the ``to_replicas`` in effect at the end of each interval from the
    first event's interval to the one holding ``end_s`` (epoch seconds)."""
    events = events.sort_values("ts", kind="stable")
    if events.empty:
        return pd.DataFrame({"ts": [], "value": []})
    first = np.floor(events["ts"].iloc[0] / interval_s) * interval_s
    last = max(end_s, float(events["ts"].iloc[-1]))
    starts = np.arange(first, last + interval_s / 2, interval_s)
    at = np.searchsorted(events["ts"].to_numpy(float), starts + interval_s, side="left") - 1
    values = events["to_replicas"].to_numpy(float)[np.clip(at, 0, None)]
    return pd.DataFrame({"ts": starts, "value": values})


def scaling_timeseries(run_id: str, scaling: pd.DataFrame, interval_s: float,
                       end_s: float) -> pd.DataFrame:
    """``target_replicas`` rows (dimension 'all') of a run's scaling records."""
    targets = scaling[scaling["event"] == TARGET_EVENT]
    steps = step_series(targets, interval_s, end_s)
    if steps.empty:
        return sc.empty_frame("timeseries")
    return sc.conform("timeseries", pd.DataFrame({
        "run_id": run_id, "ts": pd.to_datetime(steps["ts"], unit="s", utc=True),
        "metric": sc.TARGET_REPLICAS, "dimension": sc.DIMENSION_ALL,
        "value": steps["value"]}))
