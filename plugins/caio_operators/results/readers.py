"""Read a run's raw CSV chunks from the bucket, fast, with pyarrow.

Each reader returns a pandas DataFrame with fixed columns and dtypes, empty when nothing
was written (a failed run still harvests whatever exists). Extra columns in a file are
ignored, missing ones read as null, so writers can evolve without breaking harvest.
A file that cannot be parsed is skipped with a warning and reported, not fatal.
``read_record_tables`` gives the request records as Arrow tables instead (what harvest
uses: millions of rows without a pandas copy).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from caio_operators import storage
from caio_operators.layout import RunLayout

log = logging.getLogger(__name__)

CLIENT_COLUMNS: dict[str, pa.DataType] = {
    "ts": pa.float64(), "latency_ms": pa.float64(), "ok": pa.bool_(),
    "status_code": pa.int64(), "signature": pa.string(), "worker": pa.string(),
    "bytes": pa.int64(), "error": pa.string(),
}
SERVER_COLUMNS: dict[str, pa.DataType] = {
    "ts": pa.float64(), "latency_ms": pa.float64(), "ok": pa.bool_(),
    "status_code": pa.int64(), "signature": pa.string(), "replica": pa.string(),
    "instances": pa.int64(), "error": pa.string(),
}
SAMPLE_COLUMNS: dict[str, pa.DataType] = {
    "ts": pa.float64(), "replica": pa.string(), "pid": pa.int64(),
    "cpu_percent": pa.float64(), "rss_mb": pa.float64(),
}
WORKER_CPU_COLUMNS: dict[str, pa.DataType] = {
    "ts": pa.float64(), "worker": pa.string(), "cpu_percent": pa.float64(),
}
# Locust's --csv-full-history file: its header -> our name
LOCUST_HISTORY_COLUMNS: dict[str, tuple[str, pa.DataType]] = {
    "Timestamp": ("ts", pa.float64()),
    "User Count": ("users", pa.int64()),
    "Name": ("name", pa.string()),
    "Requests/s": ("request_rate_rps", pa.float64()),
    "Failures/s": ("failure_rate_rps", pa.float64()),
    "50%": ("p50_ms", pa.float64()),
    "95%": ("p95_ms", pa.float64()),
    "99%": ("p99_ms", pa.float64()),
    "Total Request Count": ("total_requests", pa.int64()),
    "Total Failure Count": ("total_failures", pa.int64()),
}
LOCUST_HISTORY_SUFFIX = "_stats_history.csv"
_NULLS = ["", "N/A", "nan", "NaN", "None"]
DICTIONARY = pa.dictionary(pa.int32(), pa.string())
_READ_THREADS = 8  # overlaps object-store round trips and parses groups in parallel
_GROUP_FILES = 64  # consecutive files a reader thread takes at a time
_JOIN_BYTES = 16 << 20  # a joined block is parsed once it holds this much
_THREADED_PARSE_BYTES = 32 << 20
_PARSE_BLOCK_BYTES = 16 << 20


@dataclass
class RawInputs:
    """Everything harvest reads for one run, plus the files it had to skip."""

    client: pd.DataFrame | pa.Table
    server: pd.DataFrame | pa.Table
    samples: pd.DataFrame
    locust_history: pd.DataFrame
    skipped: list[str] = field(default_factory=list)
    worker_cpu: pd.DataFrame = field(
        default_factory=lambda: read_csv_files([], WORKER_CPU_COLUMNS))


def _types_mapper(arrow_type: pa.DataType):
    if pa.types.is_integer(arrow_type):
        return pd.Int64Dtype()
    if pa.types.is_boolean(arrow_type):
        return pd.BooleanDtype()
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype(na_value=float("nan"))
    return None


def _empty_table(columns: dict[str, pa.DataType]) -> pa.Table:
    return pa.schema(list(columns.items())).empty_table()


def _parse(data: bytes | pa.Buffer, columns: dict[str, pa.DataType]) -> pa.Table:
    convert = pacsv.ConvertOptions(
        column_types=columns,
        include_columns=list(columns),
        include_missing_columns=True,
        null_values=_NULLS,
        strings_can_be_null=False,
    )
    # blocks are parsed in parallel by a thread pool; only a big one is worth splitting too
    read = pacsv.ReadOptions(use_threads=len(data) > _THREADED_PARSE_BYTES,
                             block_size=_PARSE_BLOCK_BYTES)
    return pacsv.read_csv(pa.BufferReader(data), read_options=read, convert_options=convert)


def _joinable(data: bytes) -> bool:
    """Whether a file may be parsed joined to its neighbours: it ends its last line and
    closes its quotes (a truncated file could otherwise swallow the next one's rows)."""
    return data.endswith(b"\n") and data.count(b'"') % 2 == 0


def _parse_group(files: Iterable[tuple[str, bytes]], columns: dict[str, pa.DataType],
                 skipped: list[str] | None) -> list[pa.Table]:
    """Parse ``files`` (uri, bytes; in order, read as they are consumed) with as few parser
    calls as their headers allow: consecutive files with the same header are joined into
    blocks of up to ``_JOIN_BYTES`` (thousands of small files cost a parser call each
    otherwise). A block that does not parse is parsed file by file, so only its bad files
    are skipped."""
    tables: list[pa.Table] = []

    def parse_alone(uri: str, data: bytes) -> None:
        try:
            tables.append(_parse(data, columns))
        except pa.ArrowInvalid as exc:
            log.warning("skipping unreadable record file %s: %s", uri, exc)
            if skipped is not None:
                skipped.append(uri)

    def flush(header: bytes, block: list[tuple[str, bytes]]) -> None:
        if len(block) == 1:
            parse_alone(*block[0])
            return
        joined = b"".join([header, *(data[len(header):] for _, data in block)])
        try:
            tables.append(_parse(joined, columns))
        except pa.ArrowInvalid:
            for uri, data in block:
                parse_alone(uri, data)

    header, size = b"", 0
    block: list[tuple[str, bytes]] = []
    for uri, data in files:
        first = data[:data.find(b"\n") + 1]
        if block and (first != header or size >= _JOIN_BYTES or not _joinable(data)):
            flush(header, block)
            block, size = [], 0
        if not _joinable(data):
            parse_alone(uri, data)
            continue
        header = first
        block.append((uri, data))
        size += len(data)
    if block:
        flush(header, block)
    return tables


def read_csv_table(uris: Iterable[str], columns: dict[str, pa.DataType],
                   skipped: list[str] | None = None) -> pa.Table:
    """Concatenate CSV files into one Arrow table with exactly ``columns``, rows in file
    order. Empty files are ignored; unparseable ones are logged, appended to ``skipped``
    and left out.

    A pool of threads reads the files (object-store round trips overlap) in groups of
    consecutive files, and parses each group with as few parser calls as it can
    (``_parse_group``)."""
    uris = list(uris)

    def files(group: list[str]) -> Iterator[tuple[str, bytes]]:
        for uri in group:
            try:
                data = storage.read_bytes(uri)
            except storage.StorageError as exc:
                log.warning("skipping unreadable record file %s: %s", uri, exc)
                if skipped is not None:
                    skipped.append(uri)
                continue
            if data.strip():
                yield uri, data

    def load(group: list[str]) -> list[pa.Table]:
        return _parse_group(files(group), columns, skipped)

    groups = [uris[i:i + _GROUP_FILES] for i in range(0, len(uris), _GROUP_FILES)]
    if len(groups) > 1:
        with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(groups))) as pool:
            tables = [t for part in pool.map(load, groups) for t in part]
    else:
        tables = [t for group in groups for t in load(group)]
    schema = pa.schema(list(columns.items()))
    # the parser already gives ``columns``: a cast per table only when it did not
    return pa.concat_tables([t if t.schema.equals(schema) else t.select(list(columns)).cast(schema)
                             for t in tables]) if tables else _empty_table(columns)


def read_csv_files(uris: Iterable[str], columns: dict[str, pa.DataType],
                   skipped: list[str] | None = None) -> pd.DataFrame:
    """Concatenate CSV files into one DataFrame with exactly ``columns``.

    Empty files are ignored; unparseable ones are logged, appended to ``skipped`` and
    left out.
    """
    return read_csv_table(uris, columns, skipped).to_pandas(types_mapper=_types_mapper)


def record_columns(columns: dict[str, pa.DataType], origin: str) -> dict[str, pa.DataType]:
    """The columns of request records that consolidation uses, text as dictionaries (a
    few distinct signatures, workers and errors over millions of rows: 4 bytes a row)."""
    keep = ("ts", "latency_ms", "ok", "status_code", "signature", origin, "error")
    return {name: DICTIONARY if columns[name] == pa.string() else columns[name]
            for name in keep}


def read_record_tables(layout: RunLayout, skipped: list[str] | None = None
                       ) -> tuple[pa.Table, pa.Table]:
    """Client and server request records as Arrow tables (``record_columns``): what
    harvest consolidates, without a pandas copy of every row."""
    def read(folder: str, columns: dict[str, pa.DataType], origin: str) -> pa.Table:
        table = read_csv_table(storage.list_files(folder, ".csv"),
                               record_columns(columns, origin), skipped)
        # one chunk per column with one dictionary instead of one per file: later steps
        # work on whole arrays (thousands of files otherwise mean thousands of tiny calls)
        return table.unify_dictionaries().combine_chunks()

    return (read(layout.client_requests_dir, CLIENT_COLUMNS, "worker"),
            read(layout.server_requests_dir, SERVER_COLUMNS, "replica"))


def read_client_records(requests_dir: str, skipped: list[str] | None = None) -> pd.DataFrame:
    """Client records (``ts,latency_ms,ok,status_code,signature,worker,bytes,error``)."""
    return read_csv_files(storage.list_files(requests_dir, ".csv"), CLIENT_COLUMNS, skipped)


def read_server_records(requests_dir: str, skipped: list[str] | None = None) -> pd.DataFrame:
    """Server records (``ts,latency_ms,ok,status_code,signature,replica,instances,error``)."""
    return read_csv_files(storage.list_files(requests_dir, ".csv"), SERVER_COLUMNS, skipped)


def read_samples(samples_dir: str, skipped: list[str] | None = None) -> pd.DataFrame:
    """Replica samples (``ts,replica,pid,cpu_percent,rss_mb``)."""
    return read_csv_files(storage.list_files(samples_dir, ".csv"), SAMPLE_COLUMNS, skipped)


def worker_cpu_dir(layout: RunLayout) -> str:
    """``<run>/load/workers``: the Locust workers' own CPU samples."""
    return storage.join(layout.load_dir, "workers")


def read_worker_cpu(workers_dir: str, skipped: list[str] | None = None) -> pd.DataFrame:
    """Locust workers' CPU per second (``ts,worker,cpu_percent``; 100 = one core busy)."""
    return read_csv_files(storage.list_files(workers_dir, ".csv"), WORKER_CPU_COLUMNS, skipped)


def read_locust_history(csv_prefix: str, skipped: list[str] | None = None) -> pd.DataFrame:
    """Locust's ``<prefix>_stats_history.csv`` with columns renamed to ours.

    Columns: ts, users, name, request_rate_rps, failure_rate_rps, p50_ms, p95_ms, p99_ms,
    total_requests, total_failures. Locust writes "N/A" before the first response; that
    reads as null.
    """
    uri = csv_prefix + LOCUST_HISTORY_SUFFIX
    columns = {header: type_ for header, (_, type_) in LOCUST_HISTORY_COLUMNS.items()}
    uris = [uri] if storage.exists(uri) else []
    frame = read_csv_files(uris, columns, skipped)
    return frame.rename(columns={h: name for h, (name, _) in LOCUST_HISTORY_COLUMNS.items()})


def read_run_inputs(layout: RunLayout, records: str = "pandas") -> RawInputs:
    """All raw inputs of one run under ``layout``; missing pieces come back empty.

    ``records="arrow"``: client and server records as Arrow tables (``read_record_tables``),
    what ``build_tables`` takes fastest; the default gives DataFrames of every column."""
    if records not in ("pandas", "arrow"):
        raise ValueError(f"records must be 'pandas' or 'arrow', got {records!r}")
    skipped: list[str] = []
    if records == "arrow":
        client, server = read_record_tables(layout, skipped)
    else:
        client = read_client_records(layout.client_requests_dir, skipped)
        server = read_server_records(layout.server_requests_dir, skipped)
    return RawInputs(
        client=client,
        server=server,
        samples=read_samples(layout.samples_dir, skipped),
        locust_history=read_locust_history(layout.locust_csv_prefix, skipped),
        skipped=skipped,
        worker_cpu=read_worker_cpu(worker_cpu_dir(layout), skipped),
    )
