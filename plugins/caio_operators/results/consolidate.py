"""Raw records -> the three tidy tables (pure: DataFrames in, DataFrames out).

``meta`` carries what was known before harvest (see ``META_FIELDS``); the raw frames come
from :mod:`caio_operators.results.readers` (or a cloud harvester producing the same
columns). Any of them may be empty: a failed run still yields a ``runs`` row.

The Locust workers' own CPU (``worker_cpu``: ``ts,worker,cpu_percent`` per second) gives
the ``worker_cpu_pct`` series and the runs' ``max_worker_cpu_pct`` and
``generator_saturated``; a saturated generator makes a successful run ``degraded``, since
its latencies then describe the generator rather than the target.

Here: the records (``requests``) and the ``runs`` row; the ``timeseries`` table is
``series.py``'s, and ``histogram_tables.py`` swaps in the histograms' latencies.
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
import pyarrow.compute as pc

from caio_operators import benchmark
from caio_operators.results import schema as sc
from caio_operators.results import stats
from caio_operators.results.series import replica_name, timeseries_table, utc_index

#: run fields taken from ``meta`` as they are (strings / ints)
META_STRINGS = ("dag_id", "target", "protocol", "model_name", "model_version",
                "model_source", "weights", "signature", "load_shape", "monitoring_coverage")
META_INTS = ("users", "workers", "replicas")
META_FIELDS = ("run_id", *META_STRINGS, *META_INTS, "status", "reason", "started_at",
               "ended_at", "provenance", "params", "harvested_at")

#: rows per batch of the streamed ``requests`` table (a Parquet row group each)
REQUEST_BATCH_ROWS = 1 << 20
_RECORD_TYPES = {"ts": pa.float64(), "latency_ms": pa.float64(), "ok": pa.bool_(),
                 "status_code": pa.int64(), "signature": pa.string(), "origin": pa.string(),
                 "error": pa.string()}


def build_tables(meta: Mapping[str, Any], client: pd.DataFrame | pa.Table,
                 server: pd.DataFrame | pa.Table, samples: pd.DataFrame,
                 locust_history: pd.DataFrame, interval_s: float = sc.DEFAULT_INTERVAL_S, *,
                 worker_cpu: pd.DataFrame | None = None,
                 batched_requests: bool = False) -> dict[str, Any]:
    """Build ``runs``, ``timeseries`` and ``requests`` for one run, exactly per the schema.

    ``client`` / ``server``: the raw records as DataFrames or Arrow tables (see
    ``readers.read_record_tables``). ``worker_cpu``: the Locust workers' CPU samples
    (``ts,worker,cpu_percent``), if any. ``batched_requests``: ``requests`` comes back as a
    ``schema.BatchedTable`` that Parquet and DuckDB stream (a long run's millions of rows
    never become Python objects), else as a DataFrame like the other tables."""
    run_id = meta.get("run_id")
    if not run_id:
        raise ValueError("meta['run_id'] is required to build a run's tables")
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    client_rec = _records(client, "worker")
    server_rec = _since(_records(server, "replica"), meta.get("started_at"))
    client, server = _stats_frame(client_rec), _stats_frame(server_rec)
    worker_cpu = _clean_worker_cpu(worker_cpu)
    requests = _requests_table(run_id, client_rec, server_rec)
    slo_ms = run_slo_ms(meta.get("params"))
    timeseries = timeseries_table(run_id, client, server, samples, locust_history, interval_s,
                                  worker_cpu, slo_ms)
    runs = _runs_table(meta, client, server, samples, worker_cpu, slo_ms)
    return {
        "runs": sc.conform("runs", runs),
        "timeseries": sc.conform("timeseries", timeseries),
        "requests": requests if batched_requests else sc.conform(
            "requests", requests.to_arrow().to_pandas(types_mapper=_pandas_type)),
    }


# --- records ------------------------------------------------------------------------------

def _pandas_type(arrow_type: pa.DataType):
    if pa.types.is_string(arrow_type):
        return pd.StringDtype(na_value=float("nan"))
    if pa.types.is_integer(arrow_type):
        return pd.Int32Dtype() if arrow_type == pa.int32() else pd.Int64Dtype()
    if pa.types.is_boolean(arrow_type):
        return pd.BooleanDtype()
    return None


def _column(data: pd.DataFrame | pa.Table, name: str, type_: pa.DataType) -> pa.ChunkedArray:
    """Column ``name`` of ``data`` as Arrow (strings as dictionaries); all null if absent."""
    n = len(data)
    if isinstance(data, pa.Table):
        col = data[name] if name in data.column_names else pa.chunked_array(
            [pa.nulls(n, type_)])
    elif name in data.columns:
        values = data[name]
        if values.dtype == object:  # Python objects: None and NaN are both missing
            values = values.where(values.notna(), None)
        arr = pa.array(values, from_pandas=True) if n else pa.array([], type_)
        col = arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])
    else:
        col = pa.chunked_array([pa.nulls(n, type_)])
    if type_ == pa.string():
        if not pa.types.is_dictionary(col.type):
            col = pc.dictionary_encode(col.cast(pa.string()))
        return col
    return col.cast(type_)


def _records(data: pd.DataFrame | pa.Table, origin: str) -> pa.Table:
    """Raw records -> an Arrow table (ts, latency_ms, ok, status_code, signature, origin,
    error; text as dictionaries): rows without a start time dropped, a missing ``ok``
    counted as a failure."""
    table = pa.table({name: _column(data, origin if name == "origin" else name, type_)
                      for name, type_ in _RECORD_TYPES.items()})
    table = table.unify_dictionaries()  # one dictionary per column: batches concatenate
    if table["ts"].null_count:
        table = table.filter(pc.is_valid(table["ts"]))
    if table["ok"].null_count:
        table = table.set_column(2, "ok", pc.fill_null(table["ok"], False))
    return table


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    if not len(col):
        return np.zeros(0)
    return pc.fill_null(col, np.nan).to_numpy() if col.null_count else col.to_numpy()


def _stats_frame(records: pa.Table) -> pd.DataFrame:
    """The columns statistics read (ts, latency_ms, ok, signature, error) as a slim
    DataFrame: numpy numbers, text as categoricals."""
    cat = {name: records[name].to_pandas().array if len(records) else pd.Categorical([])
           for name in ("signature", "error")}
    return pd.DataFrame({  # copy=False: no 2-D block of the float columns (a copy)
        "ts": _floats(records["ts"]), "latency_ms": _floats(records["latency_ms"]),
        "ok": records["ok"].to_numpy() if len(records) else np.zeros(0, dtype=bool),
        "signature": cat["signature"], "error": cat["error"]}, copy=False)


def _since(server: pa.Table, started_at: Any) -> pa.Table:
    """The server records of this load: a retried load's server (deployed once) also
    recorded the requests of the killed try before it, which are not this run's."""
    started = to_utc_timestamp(started_at)
    if not len(server) or started is None:
        return server
    return server.filter(pc.greater_equal(server["ts"], started.timestamp()))


def _clean_worker_cpu(df: pd.DataFrame | None) -> pd.DataFrame:
    """Samples with a time, a worker and a value (an empty frame when there are none)."""
    if df is None or df.empty:
        return pd.DataFrame({"ts": pd.Series([], dtype=float), "worker": pd.Series([], dtype=str),
                             "cpu_percent": pd.Series([], dtype=float)})
    return df[df["ts"].notna() & df["worker"].notna() & df["cpu_percent"].notna()]


def _requests_table(run_id: str, client: pa.Table, server: pa.Table) -> sc.BatchedTable:
    """The ``requests`` rows, made batch by batch from the record tables."""
    sources = []
    for source, records in (("client", client), ("server", server)):
        if not len(records):
            continue
        # text edits on each distinct value, not on each row
        records = records.set_column(6, "error", _map_text(records["error"], _nonempty))
        if source == "server":
            records = records.set_column(5, "origin", _map_text(records["origin"], replica_name))
        sources.append((source, records))

    def batches():
        for source, records in sources:
            for start in range(0, len(records), REQUEST_BATCH_ROWS):
                yield _request_batch(run_id, source, records.slice(start, REQUEST_BATCH_ROWS))

    return sc.BatchedTable("requests", run_id, sum(len(r) for _, r in sources), batches)


def _nonempty(text: str) -> str | None:
    return text or None


def _map_text(column: pa.ChunkedArray, fn) -> pa.ChunkedArray:
    """Apply ``fn`` (str -> str | None) to each dictionary value of a text column."""
    mapped: list[tuple[pa.Array, pa.Array]] = []  # (dictionary, mapped): chunks share one

    def apply(chunk: pa.DictionaryArray) -> pa.DictionaryArray:
        names = next((new for old, new in mapped if old.equals(chunk.dictionary)), None)
        if names is None:
            names = pa.array([None if v is None else fn(v)
                              for v in chunk.dictionary.to_pylist()], pa.string())
            mapped.append((chunk.dictionary, names))
        return pa.DictionaryArray.from_arrays(chunk.indices, names)

    return pa.chunked_array([apply(c) for c in column.chunks], column.type)


def _request_batch(run_id: str, source: str, records: pa.Table) -> pa.RecordBatch:
    n = len(records)
    micros = np.round(_floats(records["ts"]) * 1e6).astype("int64")
    return pa.RecordBatch.from_arrays([
        pa.repeat(pa.scalar(run_id), n), pa.repeat(pa.scalar(source), n),
        pa.array(micros, sc.UTC_TS),
        _combined(records["latency_ms"]), _combined(records["ok"]),
        _combined(records["status_code"]).cast(pa.int32()),
        _text(records["signature"]), _text(records["origin"]), _text(records["error"]),
    ], schema=sc.arrow_schema("requests"))


def _combined(col: pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _text(col: pa.ChunkedArray) -> pa.Array:
    """A dictionary column -> plain strings (nulls stay null)."""
    return _combined(col).cast(pa.string())


# --- runs ---------------------------------------------------------------------------------

def to_utc_timestamp(value: Any) -> pd.Timestamp | None:
    """Epoch seconds, ISO text, datetime or Timestamp -> a UTC Timestamp (None stays None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        return pd.Timestamp(utc_index(np.array([float(value)]))[0])
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


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
