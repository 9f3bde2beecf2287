"""GPU samples of the local server -> ``timeseries`` rows; a run's peak GPU utilisation.

The local server writes one row per replica and device per second (``metrics/gpu.py``,
files ``<run>/server/gpu/gpu-*.csv``); here they become the ``gpu_*`` series, per interval
and dimension ('replica-<i>/gpu-<d>' for a pinned replica, 'gpu-<d>' for a device that
replicas share unpinned). Cloud runs get ``gpu_utilization_pct`` from Cloud Monitoring
under the same name, so ``peak_gpu_pct`` reads the finished ``timeseries`` of any run.
"""

from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa

from caio_operators import storage
from caio_operators.layout import RunLayout
from caio_operators.metrics.gpu import SAMPLE_COLUMNS
from caio_operators.results import schema as sc
from caio_operators.results import stats
from caio_operators.results.readers import read_csv_files

F64 = pa.float64()
#: the sample files' columns as read (names from the writer, metrics/gpu.py)
READ_TYPES: dict[str, pa.DataType] = dict(zip(
    SAMPLE_COLUMNS, (F64, pa.string(), pa.int64(), F64, F64, F64, F64), strict=True))
#: sample column -> timeseries metric
METRIC_OF = {"gpu_pct": sc.GPU_UTILIZATION_PCT, "memory_used_mb": sc.GPU_MEMORY_USED_MB,
             "memory_total_mb": sc.GPU_MEMORY_TOTAL_MB, "power_w": sc.GPU_POWER_W}


def gpu_samples_dir(layout: RunLayout) -> str:
    """``<run>/server/gpu``: the local server's GPU samples (beside ``samples/``, whose
    reader takes every CSV file below it)."""
    return storage.join(layout.server_dir, "gpu")


def read_gpu_samples(samples_dir: str, skipped: list[str] | None = None) -> pd.DataFrame:
    """GPU samples (``ts,replica,device,gpu_pct,memory_used_mb,memory_total_mb,power_w``)."""
    return read_csv_files(storage.list_files(samples_dir, ".csv"), READ_TYPES, skipped)


def dimension(replica: object, device: object) -> str:
    """'replica-<i>/gpu-<d>', or 'gpu-<d>' when no replica is named (not pinned)."""
    gpu = f"gpu-{device}"
    if replica is None or (isinstance(replica, float) and math.isnan(replica)) or \
            str(replica) == "":
        return gpu
    return f"replica-{replica}/{gpu}"


def gpu_timeseries(run_id: str, samples: pd.DataFrame,
                   interval_s: float = sc.DEFAULT_INTERVAL_S) -> pd.DataFrame:
    """The samples' ``gpu_*`` rows: each metric's mean per interval and dimension."""
    samples = samples[samples["ts"].notna() & samples["device"].notna()]
    if samples.empty:
        return sc.empty_frame("timeseries")
    samples = samples.assign(dimension=[dimension(r, d) for r, d in zip(
        samples["replica"], samples["device"], strict=True)])
    parts = []
    for column, metric in METRIC_OF.items():
        rows = samples[samples[column].notna()]
        if rows.empty:  # power on boards that do not report it
            continue
        agg = stats.interval_aggregate(rows, column, interval_s, by="dimension", how="mean")
        parts.append(pd.DataFrame({"ts": agg["ts"], "metric": metric,
                                   "dimension": agg["dimension"], "value": agg["value"]}))
    if not parts:
        return sc.empty_frame("timeseries")
    long = pd.concat(parts, ignore_index=True).sort_values(
        ["metric", "dimension", "ts"], kind="stable", ignore_index=True)
    return sc.conform("timeseries", pd.DataFrame({
        "run_id": run_id, "ts": pd.to_datetime(long["ts"], unit="s", utc=True),
        "metric": long["metric"], "dimension": long["dimension"].astype(str),
        "value": long["value"].astype(float)}))


def peak_gpu_pct(timeseries: pd.DataFrame) -> float:
    """The highest ``gpu_utilization_pct`` of any dimension and interval; NaN without."""
    values = timeseries.loc[timeseries["metric"] == sc.GPU_UTILIZATION_PCT, "value"]
    return float(values.max()) if values.notna().any() else math.nan
