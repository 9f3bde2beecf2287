"""A run's request records as every table is built from them, and the ``requests`` table
made from them batch by batch (pure: Arrow tables in, Arrow batches out)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from caio_operators.results import schema as sc
from caio_operators.results.series import replica_name, utc_index

#: rows per batch of the streamed ``requests`` table (a Parquet row group each)
REQUEST_BATCH_ROWS = 1 << 20
_RECORD_TYPES = {"ts": pa.float64(), "latency_ms": pa.float64(), "ok": pa.bool_(),
                 "status_code": pa.int64(), "signature": pa.string(), "origin": pa.string(),
                 "error": pa.string()}


@dataclass(frozen=True)
class RunRecords:
    """A run's request records as every table is built from them (``_RECORD_TYPES``: text
    as dictionaries; rows without a start time dropped, a missing ``ok`` a failure; server
    records only from the run's start)."""

    run_id: str
    client: pa.Table
    server: pa.Table


def run_records(meta: Mapping[str, Any], client: pd.DataFrame | pa.Table,
                server: pd.DataFrame | pa.Table) -> RunRecords:
    """``client`` / ``server``: the raw records as DataFrames or Arrow tables (see
    ``readers.read_record_tables``)."""
    run_id = meta.get("run_id")
    if not run_id:
        raise ValueError("meta['run_id'] is required to build a run's tables")
    return RunRecords(str(run_id), _records(client, "worker"),
                      _since(_records(server, "replica"), meta.get("started_at")))


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


def _since(server: pa.Table, started_at: Any) -> pa.Table:
    """The server records of this load: a retried load's server (deployed once) also
    recorded the requests of the killed try before it, which are not this run's."""
    started = to_utc_timestamp(started_at)
    if not len(server) or started is None:
        return server
    first = pc.min(server["ts"]).as_py()
    if first is not None and first >= started.timestamp():
        return server  # the usual case: no copy of millions of rows
    return server.filter(pc.greater_equal(server["ts"], started.timestamp()))


def requests_table(records: RunRecords) -> sc.BatchedTable:
    """The ``requests`` rows, made batch by batch (cheap until read: a ``BatchedTable``)."""
    run_id = records.run_id
    sources = []
    for source, table in (("client", records.client), ("server", records.server)):
        if not len(table):
            continue
        # text edits on each distinct value, not on each row
        table = table.set_column(6, "error", _map_text(table["error"], _nonempty))
        if source == "server":
            table = table.set_column(5, "origin", _map_text(table["origin"], replica_name))
        sources.append((source, table))

    def batches():
        for source, table in sources:
            for start in range(0, len(table), REQUEST_BATCH_ROWS):
                yield _request_batch(run_id, source, table.slice(start, REQUEST_BATCH_ROWS))

    return sc.BatchedTable("requests", run_id, sum(len(t) for _, t in sources), batches)


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
    micros = np.round(float_values(records["ts"]) * 1e6).astype("int64")
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


def to_utc_timestamp(value: Any) -> pd.Timestamp | None:
    """Epoch seconds, ISO text, datetime or Timestamp -> a UTC Timestamp (None stays None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        return pd.Timestamp(utc_index(np.array([float(value)]))[0])
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def float_values(col: pa.ChunkedArray) -> np.ndarray:
    """A number column as float64 numpy (nulls as NaN)."""
    if not len(col):
        return np.zeros(0)
    return pc.fill_null(col, np.nan).to_numpy() if col.null_count else col.to_numpy()
