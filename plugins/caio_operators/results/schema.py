"""The one tidy schema every target produces: ``runs``, ``timeseries`` and ``requests``.

Local runs fill these tables from raw CSV records and process samples; cloud runs fill the
same tables from raw records and Cloud Monitoring. Analysis reads only these tables, so it
never knows which backend produced a run. Every table is keyed by ``run_id``. The analysis
adds two derived tables, ``verdicts`` and ``comparisons``: a run against its baseline.

Types are declared once, as Arrow types; the pandas dtypes, the DuckDB DDL and the
BigQuery types derive from them. ``conform()`` casts a DataFrame to exactly a table's
columns and dtypes; ``schema_markdown()`` renders the documentation in docs/results.md.

Why one module: the declarations (about 270 of its 420 lines are column lists) and what
derives from them are read together; a second module would split each fact from its uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa

# --- timeseries metric names (units are part of the name) -------------------------------
CLIENT_LATENCY_P50_MS = "client_latency_p50_ms"
CLIENT_LATENCY_P95_MS = "client_latency_p95_ms"
CLIENT_LATENCY_P99_MS = "client_latency_p99_ms"
REQUEST_RATE_RPS = "request_rate_rps"
FAILURE_RATE_RPS = "failure_rate_rps"
USERS = "users"
SERVER_LATENCY_P50_MS = "server_latency_p50_ms"
SERVER_LATENCY_P95_MS = "server_latency_p95_ms"
SERVER_LATENCY_P99_MS = "server_latency_p99_ms"
SERVER_REQUEST_RATE_RPS = "server_request_rate_rps"
CPU_UTILIZATION_PCT = "cpu_utilization_pct"
HOST_CPU_PCT = "host_cpu_pct"
HOST_OTHER_CPU_PCT = "host_other_cpu_pct"
MEMORY_MB = "memory_mb"
REPLICAS = "replicas"
TARGET_REPLICAS = "target_replicas"
GPU_UTILIZATION_PCT = "gpu_utilization_pct"
GPU_MEMORY_USED_MB = "gpu_memory_used_mb"
GPU_MEMORY_TOTAL_MB = "gpu_memory_total_mb"
GPU_POWER_W = "gpu_power_w"
WORKER_CPU_PCT = "worker_cpu_pct"
PEAK_OFFERED_RPS = "peak_offered_rps"
PEAK_THROUGHPUT_RPS = "peak_throughput_rps"
PEAK_LATENCY_MS = "peak_latency_ms"
PEAK_ERROR_RATE = "peak_error_rate"
PEAK_STEP_PASSED = "peak_step_passed"
GOODPUT_RPS = "goodput_rps"
DROPPED_RPS = "dropped_rps"

METRICS: dict[str, str] = {
    CLIENT_LATENCY_P50_MS: "client-side latency, median of successful requests started in "
                           "the interval",
    CLIENT_LATENCY_P95_MS: "client-side latency, 95th percentile (successful requests)",
    CLIENT_LATENCY_P99_MS: "client-side latency, 99th percentile (successful requests)",
    REQUEST_RATE_RPS: "requests started per second (all outcomes); dimension 'all' or a signature",
    FAILURE_RATE_RPS: "failed requests per second; dimension 'all' or a signature",
    USERS: "simulated users running (from Locust's stats history)",
    SERVER_LATENCY_P50_MS: "server-side latency (model call), median of successful requests",
    SERVER_LATENCY_P95_MS: "server-side latency, 95th percentile",
    SERVER_LATENCY_P99_MS: "server-side latency, 99th percentile",
    SERVER_REQUEST_RATE_RPS: "requests handled per second by the server (all outcomes)",
    CPU_UTILIZATION_PCT: "CPU of one replica, mean over the interval (100 = one core busy); "
                         "dimension 'replica-<i>'",
    HOST_CPU_PCT: "whole machine's CPU during a load run from this machine (100 = one core)",
    HOST_OTHER_CPU_PCT: "CPU of processes other than the run's own on that machine",
    MEMORY_MB: "resident memory of one replica, mean over the interval; dimension 'replica-<i>'",
    REPLICAS: "replicas reporting samples in the interval",
    GPU_UTILIZATION_PCT: "GPU duty cycle, % of the interval a kernel ran (local: NVML, "
                         "dimension 'replica-<i>/gpu-<d>' when pinned, 'gpu-<d>' when not; "
                         "cloud: the accelerator duty cycle, 'all')",
    GPU_MEMORY_USED_MB: "GPU memory in use on the device, mean over the interval (local: "
                        "NVML); dimensions as gpu_utilization_pct",
    GPU_MEMORY_TOTAL_MB: "GPU memory of the device (local: NVML); dimensions as "
                         "gpu_utilization_pct",
    GPU_POWER_W: "GPU power draw, watts, mean over the interval (local: NVML, where the "
                 "board reports it); dimensions as gpu_utilization_pct",
    TARGET_REPLICAS: "replicas the autoscaler asked for at the interval's end (local: the "
                     "server's scaling records; fixed-size servers: their replicas)",
    WORKER_CPU_PCT: "CPU of one Locust worker (load generator), mean over the interval "
                    "(100 = one core busy, a worker's limit); dimension 'worker-<id>'",
    PEAK_OFFERED_RPS: "peak_search: the arrival rate offered in one measurement window (ts = "
                      "its start); dimension 'step-<n>'",
    PEAK_THROUGHPUT_RPS: "peak_search: successful responses per second in that window",
    PEAK_LATENCY_MS: "peak_search: the SLO percentile of latency in that window",
    PEAK_ERROR_RATE: "peak_search: failed or dropped share of that window's requests",
    PEAK_STEP_PASSED: "peak_search: 1 if the step's rate passed, 0 if it failed (ts = the "
                      "step's first judged window; dimension 'step-<n>')",
    GOODPUT_RPS: "successful requests per second that took at most the slo_ms param "
                 "(requests started in the interval); absent when the params have no slo_ms",
    DROPPED_RPS: "open-loop sends the load generator dropped per second (never sent, by "
                 "intended send time); dimension 'late' (could not start in time) or "
                 "'in_flight_cap' (max_in_flight reached)",
}

DEFAULT_INTERVAL_S = 1.0
STATUSES = ("success", "failed", "degraded")
SOURCES = ("client", "server")
DIMENSION_ALL = "all"

UTC_TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str


def _c(name: str, type_: pa.DataType, description: str) -> Column:
    return Column(name, type_, description)


S, I64, I32, F64, B = pa.string(), pa.int64(), pa.int32(), pa.float64(), pa.bool_()

RUNS: tuple[Column, ...] = (
    _c("run_id", S, "unique id of the benchmark run (key of every table)"),
    _c("dag_id", S, "Airflow DAG that ran it (or 'cli')"),
    _c("status", S, "'success' | 'failed' | 'degraded'"),
    _c("reason", S, "why the run failed or degraded; empty when successful"),
    _c("target", S, "where the model was served: 'local' | 'endpoint' | 'vertex' | 'caip'"),
    _c("protocol", S, "request protocol: 'caip' | 'vertex' | 'tfserving'"),
    _c("model_name", S, "model name"),
    _c("model_version", S, "model version"),
    _c("model_source", S, "model_source param: builtin:<arch>, hub:<handle> or savedmodel:<uri>"),
    _c("weights", S, "what the weights are (untrained offline architecture, TF Hub, existing)"),
    _c("signature", S, "serving signature driven ('serving_default' | 'serving_preprocess')"),
    _c("load_shape", S, "'constant' | 'staircase' | 'open_rate' | 'peak_search'"),
    _c("users", I64, "peak simulated users"),
    _c("workers", I64, "Locust worker processes / pods"),
    _c("replicas", I64, "serving replicas"),
    _c("started_at", UTC_TS, "load start (UTC)"),
    _c("ended_at", UTC_TS, "load end (UTC)"),
    _c("duration_s", F64, "ended_at - started_at, seconds"),
    _c("requests", I64, "client requests recorded"),
    _c("failures", I64, "client requests that failed"),
    _c("error_rate", F64, "failures / requests (null when no requests)"),
    _c("throughput_rps", F64, "successful requests per second over the steady window"),
    _c("p50_ms", F64, "client latency median, successful requests, nearest-rank"),
    _c("p90_ms", F64, "client latency 90th percentile"),
    _c("p95_ms", F64, "client latency 95th percentile"),
    _c("p99_ms", F64, "client latency 99th percentile"),
    _c("p999_ms", F64, "client latency 99.9th percentile"),
    _c("max_ms", F64, "client latency maximum"),
    _c("mean_ms", F64, "client latency mean"),
    _c("server_p50_ms", F64, "server-side latency median (null when the target reports none)"),
    _c("server_p99_ms", F64, "server-side latency 99th percentile"),
    _c("peak_cpu_pct", F64, "highest CPU of any one replica in any sample (100 = one core)"),
    _c("peak_memory_mb", F64, "highest resident memory of any one replica, MB"),
    _c("provenance", S, "JSON: package, Locust, TF, Python versions, machine, git sha..."),
    _c("params", S, "JSON: the run parameters as given"),
    _c("harvested_at", UTC_TS, "when these rows were built (UTC)"),
    _c("max_worker_cpu_pct", F64, "highest CPU of any one Locust worker in any second "
                                  "(100 = one core, all a worker can use); null without samples"),
    _c("generator_saturated", B, "a Locust worker was at >= 90% CPU in more than 10% of its "
                                 "seconds: the figures describe the load generator, not the "
                                 "target (add workers); null without samples"),
    _c("max_sustainable_rps", F64, "peak_search: the highest arrival rate that met the SLO "
                                   "(0 when none did); null for other shapes"),
    _c("slo_ms", F64, "peak_search: the latency SLO, ms"),
    _c("slo_percentile", F64, "peak_search: the percentile the SLO applies to (e.g. 99)"),
    _c("peak_search", S, "peak_search: JSON with status (converged | budget), reason and each "
                         "step's rate, verdict, throughput, latency and error rate"),
    _c("fingerprint", S, "hash of `benchmark`: verdicts compare only runs with the same one"),
    _c("benchmark", S, "JSON: what the measurement depends on besides the model under test "
                       "(target and its serving settings, the machine for target=local, "
                       "signature, instances per request, payload, load shape and its knobs, "
                       "workers, load runner, record sampling)"),
    _c("host_cpu_pct", F64, "whole machine's CPU during a load run from this machine, mean "
                            "(100 = one core); null when the load ran elsewhere (GKE)"),
    _c("host_other_cpu_pct", F64, "CPU of processes other than this run's (its Locust, its "
                                  "local server, its task) during the load, mean, % of a "
                                  "core; above 10 the run is degraded"),
    _c("overlapping_runs", S, "other caio runs whose load overlapped this one's on the same "
                              "machine (comma-separated run ids; the run is degraded); empty "
                              "when none"),
    _c("monitoring_coverage", S, "cloud targets: 'complete' or 'partial: ...' (how far Cloud "
                                 "Monitoring's points reached when harvested); null for local"),
    _c("peak_gpu_pct", F64, "highest GPU utilisation of any one device (local) or of the "
                            "accelerators (cloud) in any interval; null without GPU series"),
    _c("goodput_rps", F64, "successful requests per second that took at most the slo_ms "
                           "param, over the steady window (<= throughput_rps); null when the "
                           "params have no slo_ms"),
)

TIMESERIES: tuple[Column, ...] = (
    _c("run_id", S, "run key"),
    _c("ts", UTC_TS, "interval start (UTC), aligned to multiples of interval_s on the epoch"),
    _c("metric", S, "metric name, unit in the name (see the metric list)"),
    _c("dimension", S, "'all', a signature, 'replica-<i>', 'worker-<id>', GPUs: "
                       "'replica-<i>/gpu-<d>' or 'gpu-<d>'; cloud: a latency type "
                       "(model/overhead/total), 'code-<http code>', 'log:<signature>'"),
    _c("value", F64, "the value for that interval"),
)

REQUESTS: tuple[Column, ...] = (
    _c("run_id", S, "run key"),
    _c("source", S, "'client' (load generator) | 'server' (model server)"),
    _c("ts", UTC_TS, "request start (UTC, microseconds)"),
    _c("latency_ms", F64, "latency around the request only, monotonic clock"),
    _c("ok", B, "whether the request succeeded"),
    _c("status_code", I32, "HTTP status (null when no response arrived)"),
    _c("signature", S, "serving signature requested"),
    _c("origin", S, "Locust worker id (client) or 'replica-<i>' (server)"),
    _c("error", S, "error text; null when ok"),
)

VERDICTS: tuple[Column, ...] = (
    _c("run_id", S, "run key (the candidate run)"),
    _c("baseline_run_id", S, "run compared with; null when there was none"),
    _c("baseline_rule", S, "how the baseline was chosen: 'previous' (the previous successful "
                           "run of the same model, version and fingerprint), 'version:<v>' "
                           "(the latest of version v with the same fingerprint), "
                           "'run:<run_id>' (named) or 'sweep:<run_id>' (a sweep's first "
                           "variant)"),
    _c("verdict", S, "'regression' | 'improvement' | 'no change' | 'no baseline' | "
                     "'no comparable baseline' (the reason names the nearest run and the "
                     "fields that differ) | 'not comparable' (the named or sweep baseline "
                     "measured another benchmark: the reason names the fields)"),
    _c("reason", S, "the figures behind the verdict, in words"),
    _c("percentile", S, "latency percentile judged: 'p50' | 'p95' | 'p99'"),
    _c("threshold_pct", F64, "relative change beyond which a difference counts, %"),
    _c("cost_per_hour", F64, "deployment cost per hour at the tested load (price table "
                             "currency); null when not priced"),
    _c("cost_per_1k", F64, "cost per 1,000 predictions at cost_basis_rps"),
    _c("cost_basis", S, "'max_sustainable_rps' (peak search) or 'throughput_rps' (measured)"),
    _c("cost_basis_rps", F64, "the throughput the cost per 1,000 is computed at, req/s"),
    _c("cost_note", S, "how the cost was priced (machine, replicas, accelerators, price date)"),
    _c("price_date", S, "date the price table's prices were taken"),
    _c("analysed_at", UTC_TS, "when the comparison was made (UTC)"),
)

COMPARISONS: tuple[Column, ...] = (
    _c("run_id", S, "run key (the candidate run)"),
    _c("baseline_run_id", S, "run compared with"),
    _c("metric", S, "'p50_ms' | 'p95_ms' | 'p99_ms' | 'throughput_rps' | 'max_sustainable_rps'"),
    _c("candidate", F64, "the figure in this run"),
    _c("baseline", F64, "the figure in the baseline run"),
    _c("change_pct", F64, "candidate / baseline - 1, %"),
    _c("ci_low_pct", F64, "95% bootstrap interval of change_pct, low end (null: no interval)"),
    _c("ci_high_pct", F64, "95% bootstrap interval of change_pct, high end"),
    _c("worse", B, "worse by more than the threshold, with the interval excluding zero"),
    _c("better", B, "better by more than the threshold, with the interval excluding zero"),
    _c("analysed_at", UTC_TS, "when the comparison was made (UTC)"),
)

#: the tables harvest writes for every run
TABLES: dict[str, tuple[Column, ...]] = {
    "runs": RUNS,
    "timeseries": TIMESERIES,
    "requests": REQUESTS,
}
#: tables the analysis derives from those (a run's comparison with its baseline)
DERIVED_TABLES: dict[str, tuple[Column, ...]] = {
    "verdicts": VERDICTS,
    "comparisons": COMPARISONS,
}
#: every table of the warehouse
ALL_TABLES: dict[str, tuple[Column, ...]] = {**TABLES, **DERIVED_TABLES}
TABLE_DOCS = {
    "runs": "one summary row per run",
    "timeseries": f"one row per (interval, metric, dimension); default interval "
                  f"{DEFAULT_INTERVAL_S:g} s",
    "requests": "raw per-request records, client and server side",
    "verdicts": "one row per analysed run: its verdict against its baseline and its cost",
    "comparisons": "one row per (analysed run, figure) compared with the baseline",
}


def columns(table: str) -> list[str]:
    return [c.name for c in _table(table)]


def _table(table: str) -> tuple[Column, ...]:
    try:
        return ALL_TABLES[table]
    except KeyError:
        raise ValueError(
            f"unknown table {table!r}; the schema has {', '.join(ALL_TABLES)}"
        ) from None


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, c.type, metadata={"description": c.description}) for c in _table(table)]
    )


def _pandas_dtype(type_: pa.DataType) -> str:
    if pa.types.is_string(type_):
        return "str"
    if pa.types.is_integer(type_):
        return "Int64" if type_ == I64 else "Int32"
    if pa.types.is_floating(type_):
        return "float64"
    if pa.types.is_boolean(type_):
        return "boolean"
    if pa.types.is_timestamp(type_):
        return "datetime64[us, UTC]"
    raise TypeError(f"no pandas dtype for {type_}")


def pandas_dtypes(table: str) -> dict[str, str]:
    return {c.name: _pandas_dtype(c.type) for c in _table(table)}


_DUCKDB = {S: "VARCHAR", I64: "BIGINT", I32: "INTEGER", F64: "DOUBLE", B: "BOOLEAN",
           UTC_TS: "TIMESTAMPTZ"}
_BIGQUERY = {S: "STRING", I64: "INT64", I32: "INT64", F64: "FLOAT64", B: "BOOL",
             UTC_TS: "TIMESTAMP"}


def sql_types(table: str, dialect: str = "duckdb") -> dict[str, str]:
    """Column -> SQL type for ``dialect`` ('duckdb' or 'bigquery')."""
    mapping = {"duckdb": _DUCKDB, "bigquery": _BIGQUERY}.get(dialect)
    if mapping is None:
        raise ValueError(f"unknown SQL dialect {dialect!r}; use 'duckdb' or 'bigquery'")
    return {c.name: mapping[c.type] for c in _table(table)}


def empty_frame(table: str):
    import pandas as pd

    return pd.DataFrame({name: pd.Series([], dtype=dtype)
                         for name, dtype in pandas_dtypes(table).items()})


def conform(table: str, df):
    """``df`` with exactly the columns of ``table``, in order, cast to the schema's dtypes.

    Missing columns are an error (a silent null column would hide a bug upstream);
    extra columns are dropped.
    """
    import pandas as pd

    wanted = pandas_dtypes(table)
    missing = [name for name in wanted if name not in df.columns]
    if missing:
        raise ValueError(f"{table}: missing columns {missing}; expected {list(wanted)}")
    out = {}
    for name, dtype in wanted.items():
        col = df[name]
        if dtype.startswith("datetime64") and not isinstance(col.dtype, pd.DatetimeTZDtype):
            if pd.api.types.is_numeric_dtype(col) and len(col):
                # pandas would read numbers as nanoseconds: make the caller say the unit
                raise TypeError(f"{table}.{name} holds numbers; convert epoch seconds with "
                                "pd.to_datetime(values, unit='s', utc=True) first")
            col = pd.to_datetime(col, utc=True)
        out[name] = col.astype(dtype)
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


@dataclass(frozen=True)
class BatchedTable:
    """A table made batch by batch, for one too large to hold whole as Python objects (a
    long run's ``requests``): the Parquet writer and DuckDB stream it, ``to_arrow()``
    materialises it. Every call of ``batches`` starts a fresh pass; all rows are of
    ``run_id``."""

    table: str
    run_id: str
    num_rows: int
    batches: Callable[[], Iterator[pa.RecordBatch]]

    def __len__(self) -> int:
        return self.num_rows

    def reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(arrow_schema(self.table), self.batches())

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_batches(list(self.batches()), schema=arrow_schema(self.table))


def to_arrow(table: str, df) -> pa.Table:
    """An Arrow table of ``df`` (a DataFrame, an Arrow table or a ``BatchedTable``) with
    exactly the schema of ``table``."""
    if isinstance(df, BatchedTable):
        return df.to_arrow()
    if isinstance(df, pa.Table):
        missing = [name for name in columns(table) if name not in df.column_names]
        if missing:
            raise ValueError(f"{table}: missing columns {missing}; expected {columns(table)}")
        return df.select(columns(table)).cast(arrow_schema(table))
    frame = conform(table, df)
    return pa.Table.from_pandas(frame, schema=arrow_schema(table), preserve_index=False)


def validate(table: str, df) -> None:
    """Raise ``ValueError`` unless ``df`` has exactly the columns and dtypes of ``table``."""
    wanted = pandas_dtypes(table)
    if list(df.columns) != list(wanted):
        raise ValueError(f"{table}: columns {list(df.columns)} != schema {list(wanted)}")
    wrong = {n: str(df[n].dtype) for n, d in wanted.items() if str(df[n].dtype) != d}
    if wrong:
        raise ValueError(f"{table}: wrong dtypes {wrong}; expected {wanted}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bare pipe would split the markdown cell


def schema_markdown() -> str:
    """The schema as markdown (tables, columns, types, metric names) for docs/results.md."""
    lines = [
        "All tables are keyed by `run_id`; timestamps are UTC (microseconds). "
        "SQL types: DuckDB / BigQuery.",
        "",
    ]
    for table, cols in ALL_TABLES.items():
        duck, bq = sql_types(table, "duckdb"), sql_types(table, "bigquery")
        lines += [f"### `{table}`: {TABLE_DOCS[table]}", "",
                  "| column | type | description |", "|---|---|---|"]
        lines += [f"| `{c.name}` | {duck[c.name]} / {bq[c.name]} | {_cell(c.description)} |"
                  for c in cols]
        lines.append("")
    lines += ["### Metrics in `timeseries.metric`", "", "| metric | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(text)} |" for name, text in METRICS.items()]
    lines.append("")
    return "\n".join(lines)
