"""Raw records -> the three tidy tables (pure: DataFrames in, DataFrames out).

``meta`` carries what was known before harvest (see ``META_FIELDS``); the raw frames come
from :mod:`caio_operators.results.readers` (or a cloud harvester producing the same
columns). Any of them may be empty: a failed run still yields a ``runs`` row.

The Locust workers' own CPU (``worker_cpu``: ``ts,worker,cpu_percent`` per second) gives
the ``worker_cpu_pct`` series and the runs' ``max_worker_cpu_pct`` and
``generator_saturated``; a saturated generator makes a successful run ``degraded``, since
its latencies then describe the generator rather than the target.

Here: the ``runs`` row and how the tables are put together; the records and the
``requests`` table are ``records.py``'s, the ``timeseries`` table is ``series.py``'s, and
``histogram_tables.py`` swaps in the histograms' latencies.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from caio_operators import benchmark
from caio_operators.results import schema as sc
from caio_operators.results import stats
from caio_operators.results.records import (
    RunRecords,
    float_values,
    requests_table,
    run_records,
    to_utc_timestamp,
)
from caio_operators.results.series import timeseries_table

#: run fields taken from ``meta`` as they are (strings / ints)
META_STRINGS = ("dag_id", "target", "protocol", "model_name", "model_version",
                "model_source", "weights", "signature", "load_shape", "monitoring_coverage")
META_INTS = ("users", "workers", "replicas")
META_FIELDS = ("run_id", *META_STRINGS, *META_INTS, "status", "reason", "started_at",
               "ended_at", "provenance", "params", "harvested_at")

def build_tables(meta: Mapping[str, Any], client: pd.DataFrame | pa.Table,
                 server: pd.DataFrame | pa.Table, samples: pd.DataFrame,
                 locust_history: pd.DataFrame, interval_s: float = sc.DEFAULT_INTERVAL_S, *,
                 worker_cpu: pd.DataFrame | None = None,
                 batched_requests: bool = False) -> dict[str, Any]:
    """Build ``runs``, ``timeseries`` and ``requests`` for one run, exactly per the schema
    (``run_records``, ``requests_table``, ``summary_tables``).

    ``client`` / ``server``: the raw records as DataFrames or Arrow tables (see
    ``readers.read_record_tables``). ``worker_cpu``: the Locust workers' CPU samples
    (``ts,worker,cpu_percent``), if any. ``batched_requests``: ``requests`` comes back as a
    ``schema.BatchedTable`` that Parquet and DuckDB stream (a long run's millions of rows
    never become Python objects), else as a DataFrame like the other tables."""
    records = run_records(meta, client, server)
    requests = requests_table(records)
    return {
        **summary_tables(meta, records, samples, locust_history, interval_s,
                         worker_cpu=worker_cpu),
        "requests": requests if batched_requests else sc.conform(
            "requests", requests.to_arrow().to_pandas(types_mapper=_pandas_type)),
    }


def summary_tables(meta: Mapping[str, Any], records: RunRecords, samples: pd.DataFrame,
                   locust_history: pd.DataFrame, interval_s: float = sc.DEFAULT_INTERVAL_S, *,
                   worker_cpu: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """``runs`` and ``timeseries`` of one run from its records (``run_records``) and its
    samples; ``worker_cpu`` as in ``build_tables``."""
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    client, server = _stats_frame(records.client), _stats_frame(records.server)
    worker_cpu = _clean_worker_cpu(worker_cpu)
    slo_ms = run_slo_ms(meta.get("params"))
    timeseries = timeseries_table(records.run_id, client, server, samples, locust_history,
                                  interval_s, worker_cpu, slo_ms)
    runs = _runs_table(meta, client, server, samples, worker_cpu, slo_ms)
    return {"runs": sc.conform("runs", runs), "timeseries": sc.conform("timeseries", timeseries)}


# --- records ------------------------------------------------------------------------------

def _pandas_type(arrow_type: pa.DataType):
    if pa.types.is_string(arrow_type):
        return pd.StringDtype(na_value=float("nan"))
    if pa.types.is_integer(arrow_type):
        return pd.Int32Dtype() if arrow_type == pa.int32() else pd.Int64Dtype()
    if pa.types.is_boolean(arrow_type):
        return pd.BooleanDtype()
    return None


def _stats_frame(records: pa.Table) -> pd.DataFrame:
    """The columns statistics read (ts, latency_ms, ok, signature, error) as a slim
    DataFrame: numpy numbers, text as categoricals."""
    cat = {name: records[name].to_pandas().array if len(records) else pd.Categorical([])
           for name in ("signature", "error")}
    return pd.DataFrame({  # copy=False: no 2-D block of the float columns (a copy)
        "ts": float_values(records["ts"]), "latency_ms": float_values(records["latency_ms"]),
        "ok": records["ok"].to_numpy() if len(records) else np.zeros(0, dtype=bool),
        "signature": cat["signature"], "error": cat["error"]}, copy=False)


def _clean_worker_cpu(df: pd.DataFrame | None) -> pd.DataFrame:
    """Samples with a time, a worker and a value (an empty frame when there are none)."""
    if df is None or df.empty:
        return pd.DataFrame({"ts": pd.Series([], dtype=float), "worker": pd.Series([], dtype=str),
                             "cpu_percent": pd.Series([], dtype=float)})
    return df[df["ts"].notna() & df["worker"].notna() & df["cpu_percent"].notna()]


# --- runs ---------------------------------------------------------------------------------

def _json(value: Any) -> str:
    return json.dumps(value or {}, sort_keys=True, default=str)


def _int_or_none(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _max_or_nan(df: pd.DataFrame, col: str) -> float:
    if df.empty:
        return math.nan
    values = df[col].to_numpy(dtype=float, na_value=np.nan)
    return float(np.nanmax(values)) if (~np.isnan(values)).any() else math.nan


def _status(meta: Mapping[str, Any], figures: Mapping[str, Any],
            client: pd.DataFrame) -> tuple[str, str]:
    status = meta.get("status") or "success"
    reason = meta.get("reason") or ""
    requests, failures = int(figures["requests"]), int(figures["failures"])
    if status not in sc.STATUSES:
        raise ValueError(f"meta['status'] is {status!r}; expected one of {sc.STATUSES}")
    if status == "success" and requests == 0:
        # a load stage that "succeeded" without a single recorded request measured nothing
        return "degraded", "no client requests were recorded"
    if status == "success" and failures == requests:
        # nothing was served: the figures describe errors, not the model
        errors = client["error"].dropna().astype(object)
        common = errors.mode().iloc[0] if not errors.empty else "unknown"
        return "failed", f"all {requests} requests failed; most frequent error: {common}"
    return status, reason


def _during(samples: pd.DataFrame, started: pd.Timestamp | None,
            ended: pd.Timestamp | None) -> pd.DataFrame:
    """The samples whose window starts between the load's start and end (all of them when
    either is unknown): a worker idles before the load starts and after it stops, which
    would dilute its busy share."""
    if samples.empty or started is None or ended is None:
        return samples
    ts = samples["ts"].to_numpy(float)
    return samples[(ts >= started.timestamp()) & (ts < ended.timestamp())]


def generator_saturation(worker_cpu: pd.DataFrame) -> tuple[bool | None, str]:
    """``(saturated, reason)`` for the run from its workers' CPU samples: saturated when any
    worker was saturated (``stats.cpu_saturation``); the reason names the worker with the
    largest saturated share. ``(None, "")`` without samples."""
    if worker_cpu.empty:
        return None, ""
    verdicts = []
    for worker, part in worker_cpu.groupby("worker", sort=True):
        saturated, share, peak = stats.cpu_saturation(
            part["cpu_percent"].to_numpy(dtype=float, na_value=np.nan))
        verdicts.append((saturated, share, peak, str(worker)))
    hot = [v for v in verdicts if v[0]]
    if not hot:
        return False, ""
    _, share, peak, worker = max(hot, key=lambda v: (v[1], v[2]))
    return True, (f"load generator saturated: worker {worker} at {peak:.0f}% CPU in "
                  f"{share:.0%} of the run; add workers")


def benchmark_columns(params: Any, provenance: Any) -> dict[str, str | None]:
    """``fingerprint`` and ``benchmark`` of a run from its params and provenance (dicts or
    their JSON text); None for both when the params are unknown."""
    params, provenance = _as_dict(params), _as_dict(provenance)
    if not params:
        return {"fingerprint": None, "benchmark": None}
    fields = benchmark.benchmark_fields(params, provenance)
    return {"fingerprint": benchmark.fingerprint(fields),
            "benchmark": json.dumps(fields, sort_keys=True, default=str)}


def run_slo_ms(params: Any) -> float | None:
    """The ``slo_ms`` param of a run (dict or JSON text); None when absent or not > 0."""
    value: Any = _as_dict(params).get("slo_ms")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return dict(value) if isinstance(value, Mapping) else {}


def _runs_table(meta: Mapping[str, Any], client: pd.DataFrame, server: pd.DataFrame,
                samples: pd.DataFrame, worker_cpu: pd.DataFrame, slo_ms: float | None = None
                ) -> pd.DataFrame:
    figures = stats.latency_summary(client)
    ok_server = server[server["ok"]] if not server.empty else server
    server_pct = stats.percentiles(
        ok_server["latency_ms"].to_numpy(dtype=float, na_value=np.nan)
        if not ok_server.empty else [], (50, 99))
    started, ended = to_utc_timestamp(meta.get("started_at")), to_utc_timestamp(
        meta.get("ended_at"))
    if not client.empty:  # fall back to what the records show
        ts = client["ts"].to_numpy(float)
        ends = ts + client["latency_ms"].to_numpy(dtype=float, na_value=0.0) / 1000.0
        started = started or to_utc_timestamp(float(ts.min()))
        ended = ended or to_utc_timestamp(float(np.nanmax(ends)))
    duration = (ended - started).total_seconds() if started is not None and ended is not None \
        else math.nan
    status, reason = _status(meta, figures, client)
    in_run = _during(worker_cpu, started, ended)
    generator_saturated, saturated_reason = generator_saturation(in_run)
    if generator_saturated:
        if status == "success":
            status, reason = "degraded", saturated_reason
        else:
            reason = f"{reason}; {saturated_reason}" if reason else saturated_reason
    harvested = to_utc_timestamp(meta.get("harvested_at")) or pd.Timestamp(
        dt.datetime.now(dt.UTC))
    row: dict[str, Any] = {"run_id": meta["run_id"], "status": status, "reason": reason}
    row.update({name: meta.get(name) for name in META_STRINGS})
    row.update({name: _int_or_none(meta.get(name)) for name in META_INTS})
    row.update({
        "started_at": started, "ended_at": ended, "duration_s": duration,
        **figures,
        "throughput_rps": stats.throughput_rps(client),
        "server_p50_ms": server_pct[50.0], "server_p99_ms": server_pct[99.0],
        "peak_cpu_pct": _max_or_nan(samples, "cpu_percent"),
        "peak_memory_mb": _max_or_nan(samples, "rss_mb"),
        "provenance": _json(meta.get("provenance")),
        "params": _json(meta.get("params")),
        "harvested_at": harvested,
        "max_worker_cpu_pct": _max_or_nan(in_run, "cpu_percent"),
        "generator_saturated": generator_saturated,
        # peak_search runs: filled from the search's own file (results/peak.py)
        "max_sustainable_rps": math.nan, "slo_ms": math.nan, "slo_percentile": math.nan,
        "peak_search": None,
        **benchmark_columns(meta.get("params"), meta.get("provenance")),
        # runs loaded from this machine: filled from the load's host file (metrics/host.py)
        "host_cpu_pct": math.nan, "host_other_cpu_pct": math.nan, "overlapping_runs": "",
        # every target: filled from the finished timeseries (results/gpu.py)
        "peak_gpu_pct": math.nan,
        "goodput_rps": math.nan if slo_ms is None else stats.goodput_rps(client, slo_ms),
    })
    frame = pd.DataFrame([row])
    for col in ("started_at", "ended_at", "harvested_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame
