"""The BigQuery warehouse: the DuckDB warehouse's narrow interface on a BigQuery dataset.

``bigquery://project/dataset[?location=EU]`` holds the same tables as the local
DuckDB file (types from :mod:`caio_operators.results.schema`), partitioned by day on
their time column and clustered by ``run_id`` so one run's rows are cheap to find.

How ``replace_run`` stays idempotent without a transaction: the run's rows are deleted
with one parameterised ``DELETE ... WHERE run_id = @run_id`` per table, ``runs`` first,
then the frames are appended by load jobs (Parquet, explicit schema), ``runs`` last.
Every DELETE and every load is atomic on its own, and the analysis finds a run through
its ``runs`` row, so it never finds a half-written run: a replace that dies half-way
leaves the run absent until the retry, never duplicated. (Parquet with an explicit
schema is also what the client's own ``load_table_from_dataframe`` sends.) A staging table +
MERGE (or a multi-statement transaction) would also hide the gap, but BigQuery aborts
transactions that mutate a table concurrently with another, which is exactly what the
parallel harvests of a sweep do, and staging tables need extra jobs and cleanup;
plain DML statements are queued instead.

Reads are the named questions of :class:`~.base.Warehouse` (a run's row, the latest run,
baseline candidates, a run's client latencies, the history), each written here in
GoogleSQL against ```project.dataset.table``` (project and dataset validated, table names
allow-listed), with every value an ``@name`` ``ScalarQueryParameter``. Ad-hoc SQL is the
DuckDB warehouse's (``DuckDBWarehouse.query``); on BigQuery, use its console or ``bq``.

Why one module: one adapter (about 410 lines); splitting it would scatter one SQL dialect
and its client's calls.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import pandas as pd

from caio_operators.results import schema as sc
from caio_operators.results.warehouse.base import (
    TABLES,
    Loader,
    WarehouseError,
    check_table,
    frame_as_arrow,
    run_frames_as_arrow,
)

log = logging.getLogger(__name__)

#: day partitioning column per table; every table is clustered by run_id
PARTITION_FIELDS = {"runs": "started_at", "timeseries": "ts", "requests": "ts",
                    "verdicts": "analysed_at", "comparisons": "analysed_at"}
CLUSTER_FIELDS = ("run_id",)
#: delete ``runs`` first and load it last: a run is listed only once its rows are in
#: (the derived tables go with their run: a re-harvested run loses its old verdict)
DELETE_ORDER = ("runs", "timeseries", "requests", "verdicts", "comparisons")
LOAD_ORDER = ("comparisons", "verdicts", "requests", "timeseries", "runs")
READ_ORDER = {"runs": "", "timeseries": " ORDER BY metric, dimension, ts",
              "requests": " ORDER BY source, ts", "verdicts": "",
              "comparisons": " ORDER BY metric"}
JOB_ID_PREFIX = "caio_"
JOB_LABELS = {"app": "caio-bench"}

_PROJECT = re.compile(r"^(?:[a-z][a-z0-9.-]{0,62}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_LOCATION = re.compile(r"^[A-Za-z]+(?:-[a-z]+[0-9]+)?$")
# the API answers with legacy type names; the schema module speaks GoogleSQL
_LEGACY_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}


class BigQueryWarehouseError(WarehouseError):
    """A BigQuery call failed; ``status`` is the HTTP status, ``retryable`` for 429/5xx."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status
        self.retryable = status == 429 or status >= 500


# --- URI ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BigQueryTarget:
    project: str
    dataset: str
    location: str | None = None


def parse_uri(uri: str) -> BigQueryTarget:
    """``bigquery://project/dataset[?location=EU]`` -> its parts, validated.

    Project and dataset end up in SQL text as identifiers, so they must match BigQuery's
    naming rules exactly.
    """
    parsed = urlparse(uri)
    dataset = parsed.path.strip("/")
    if parsed.scheme != "bigquery" or not parsed.netloc or not dataset:
        raise WarehouseError(f"warehouse URI {uri!r} must look like bigquery://project/dataset")
    project = parsed.netloc
    if not _PROJECT.match(project):
        raise WarehouseError(f"warehouse URI {uri!r}: {project!r} is not a project id "
                             "(6-30 lowercase letters, digits, hyphens)")
    if not _DATASET.match(dataset):
        raise WarehouseError(f"warehouse URI {uri!r}: {dataset!r} is not a dataset name "
                             "(letters, digits, underscores)")
    query = parse_qs(parsed.query)
    unknown = sorted(set(query) - {"location"})
    if unknown:
        raise WarehouseError(f"warehouse URI {uri!r}: unknown options {unknown}; "
                             "only ?location=... is accepted")
    location = (query.get("location") or [""])[-1] or None
    return BigQueryTarget(project, dataset, _check_location(location))


def _check_location(location: str | None) -> str | None:
    if location and not _LOCATION.match(location):
        raise WarehouseError(f"location {location!r} is not a BigQuery location "
                             "(e.g. US, EU, europe-west1)")
    return location or None


def _backtick(identifier: str) -> str:
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"


# --- the warehouse -------------------------------------------------------------------------------

class BigQueryWarehouse:
    """Runs' tables in a BigQuery dataset; same interface as ``DuckDBWarehouse``.

    ``client`` is a ``google.cloud.bigquery.Client`` (injected in tests); without one it
    is built on first use from the Airflow connection ``gcp_conn_id`` (optionally
    impersonating ``impersonation_chain``) with the Google provider's BigQueryHook, or
    from Application Default Credentials when ``gcp_conn_id`` is None.
    """

    def __init__(self, project: str, dataset: str, *, client: Any = None,
                 location: str | None = None, gcp_conn_id: str | None = "google_cloud_default",
                 impersonation_chain: str | Sequence[str] | None = None,
                 timeout_s: float = 600.0):
        target = parse_uri(f"bigquery://{project}/{dataset}")
        self.project, self.dataset = target.project, target.dataset
        self.location = _check_location(location)
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = impersonation_chain or None
        self.timeout_s = timeout_s
        self._client = client
        self._schema_ready = False
        suffix = f"?location={self.location}" if self.location else ""
        self.uri = f"bigquery://{self.project}/{self.dataset}{suffix}"

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> BigQueryWarehouse:
        """The warehouse for ``bigquery://project/dataset[?location=..]``; ``options`` are
        the keyword arguments of ``__init__`` (a ``location`` option wins over the URI's)."""
        target = parse_uri(uri)
        options.setdefault("location", target.location)
        return cls(target.project, target.dataset, **options)

    def __repr__(self) -> str:
        return f"BigQueryWarehouse({self.uri!r})"

    # -- plumbing --

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        if self.gcp_conn_id is None:
            from google.cloud import bigquery

            return bigquery.Client(project=self.project, location=self.location)
        from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook

        # without a location of our own, the connection's extras may name one
        extra = {"location": self.location} if self.location else {}
        hook = BigQueryHook(gcp_conn_id=self.gcp_conn_id, use_legacy_sql=False,
                            impersonation_chain=self.impersonation_chain, **extra)
        return hook.get_client(project_id=self.project, location=hook.location)

    @property
    def dataset_id(self) -> str:
        return f"{self.project}.{self.dataset}"

    def table_id(self, table: str) -> str:
        return f"{self.dataset_id}.{check_table(table)}"

    def _ref(self, table: str) -> str:
        return _backtick(self.table_id(table))

    @contextlib.contextmanager
    def _explained(self, doing: str, reading: bool = False) -> Iterator[None]:
        """Google API errors leave as BigQueryWarehouseError with a message that says why."""
        try:
            yield
        except WarehouseError:
            raise
        except Exception as exc:
            from caio_operators.hooks.errors import explain_google_error, http_status

            status = http_status(exc)
            if status is None:
                raise
            text = f"{doing} in {self.uri}: {explain_google_error(exc, 'bigquery')}"
            if reading and status == 404:
                text += (" If the warehouse is new, harvest a run into it first "
                         "(that creates the dataset and tables).")
            raise BigQueryWarehouseError(text, status) from exc

    def _run_query(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        """Run one GoogleSQL statement with parameters; the finished rows iterator."""
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(query_parameters=list(parameters),
                                         use_legacy_sql=False, labels=dict(JOB_LABELS))
        job = self.client.query(sql, job_config=config, location=self.location,
                                job_id_prefix=JOB_ID_PREFIX)
        return job.result(timeout=self.timeout_s)

    # -- schema --

    def _bq_schema(self, table: str) -> list[Any]:
        from google.cloud import bigquery

        types = sc.sql_types(table, "bigquery")
        return [bigquery.SchemaField(col.name, types[col.name], mode="NULLABLE",
                                     description=col.description)
                for col in sc.ALL_TABLES[table]]

    def _table_spec(self, table: str) -> Any:
        from google.cloud import bigquery

        spec = bigquery.Table(self.table_id(table), schema=self._bq_schema(table))
        spec.description = f"caio-bench: {sc.TABLE_DOCS[table]}"
        spec.time_partitioning = bigquery.TimePartitioning(
            type_=bigquery.TimePartitioningType.DAY, field=PARTITION_FIELDS[table])
        spec.clustering_fields = list(CLUSTER_FIELDS)
        return spec

    def _check_existing(self, table: str, existing: Any) -> None:
        have = {f.name: _LEGACY_TYPES.get(f.field_type, f.field_type) for f in existing.schema}
        wanted = sc.sql_types(table, "bigquery")
        missing = [n for n in wanted if n not in have]
        wrong = {n: have[n] for n in wanted if n in have and have[n] != wanted[n]}
        if missing or wrong:
            fix = "; ".join(f"ALTER TABLE {self._ref(table)} ADD COLUMN {n} {wanted[n]}"
                            for n in missing)
            raise WarehouseError(
                f"table {self.table_id(table)} predates this schema: missing columns "
                f"{missing}, wrong types {wrong} (expected {wanted}). "
                + (f"Add them with: {fix}, or use a new dataset." if fix else
                   "Use a new dataset or migrate the table."))

    def ensure_schema(self) -> None:
        """Create the dataset and the tables when missing (existing ones are kept,
        after checking they have the schema's columns)."""
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        client = self.client
        with self._explained("creating the warehouse dataset"):
            try:
                client.get_dataset(self.dataset_id)
            except NotFound:
                dataset = bigquery.Dataset(self.dataset_id)
                if self.location:
                    dataset.location = self.location
                dataset.description = "caio-bench results (runs, timeseries, requests, verdicts)"
                client.create_dataset(dataset, exists_ok=True)
                log.info("created BigQuery dataset %s", self.dataset_id)
        for table in TABLES:
            with self._explained(f"creating table {table}"):
                try:
                    existing = client.get_table(self.table_id(table))
                except NotFound:
                    # exists_ok: a parallel harvest may have created it since the lookup
                    existing = client.create_table(self._table_spec(table), exists_ok=True)
                    log.info("created BigQuery table %s", self.table_id(table))
            self._check_existing(table, existing)
        self._schema_ready = True

    # -- writes --

    def replace_run(self, tables: Mapping[str, pd.DataFrame], run_id: str) -> dict[str, int]:
        """Replace everything stored for ``run_id`` with ``tables``.

        Deletes the run's rows from every table (``runs`` first), then appends the given
        frames with load jobs (``runs`` last). Returns the rows loaded per table.
        """
        return self._replace(tables, run_id, DELETE_ORDER)

    @contextlib.contextmanager
    def replacing(self, run_id: str) -> Iterator[Loader]:
        """``replace_run`` of the tables loaded in the block, at its end (BigQuery has no
        transaction across load jobs): each ``load`` converts its table at once (a
        ``BatchedTable`` is read then)."""
        tables: dict[str, Any] = {}

        def load(name: str, frame: Any) -> int:
            tables[name] = frame_as_arrow(name, frame, run_id)
            return tables[name].num_rows

        yield load
        self.replace_run(tables, run_id)

    def replace_tables(self, tables: Mapping[str, pd.DataFrame], run_id: str
                       ) -> dict[str, int]:
        """Replace ``run_id``'s rows in the given tables only (the analysis's derived
        tables): one DELETE then one load per table; the run's other rows stay."""
        return self._replace(tables, run_id, tuple(t for t in DELETE_ORDER if t in tables))

    def _replace(self, tables: Mapping[str, pd.DataFrame], run_id: str,
                 clear: tuple[str, ...]) -> dict[str, int]:
        from google.cloud import bigquery

        payloads = run_frames_as_arrow(tables, run_id)
        if not self._schema_ready:
            self.ensure_schema()
        run_param = [bigquery.ScalarQueryParameter("run_id", "STRING", run_id)]
        for table in clear:
            with self._explained(f"deleting run {run_id!r} from {table}"):
                self._run_query(f"DELETE FROM {self._ref(table)} "  # noqa: S608 (allow-listed)
                                "WHERE run_id = @run_id", run_param)
        counts: dict[str, int] = {}
        for table in LOAD_ORDER:
            if table not in payloads:
                continue
            data = payloads[table]
            counts[table] = data.num_rows
            if data.num_rows:
                self._load(table, data)
        log.info("stored run %s in %s: %s", run_id, self.uri, counts)
        return {name: counts[name] for name in tables}

    def _load(self, table: str, data: Any) -> None:
        import pyarrow.parquet as pq
        from google.cloud import bigquery

        buffer = io.BytesIO()
        pq.write_table(data, buffer, compression="zstd")
        buffer.seek(0)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
            schema=self._bq_schema(table), labels=dict(JOB_LABELS))
        with self._explained(f"loading {data.num_rows} rows into {table}"):
            job = self.client.load_table_from_file(
                buffer, self.table_id(table), job_config=config, location=self.location,
                job_id_prefix=JOB_ID_PREFIX, size=buffer.getbuffer().nbytes)
            job.result(timeout=self.timeout_s)
        loaded = getattr(job, "output_rows", None)
        if loaded is not None and loaded != data.num_rows:
            raise WarehouseError(f"loading {table} wrote {loaded} rows, expected "
                                 f"{data.num_rows}; replace the run again")

    # -- reads --

    def read_run(self, run_id: str) -> dict[str, pd.DataFrame]:
        """Every table's rows for ``run_id``, schema dtypes (empty frames for unknown runs)."""
        from google.cloud import bigquery

        run_param = [bigquery.ScalarQueryParameter("run_id", "STRING", run_id)]
        out = {}
        for table in sc.TABLES:  # the harvested tables; derived ones via query()
            cols = ", ".join(_backtick(c) for c in sc.columns(table))
            sql = (f"SELECT {cols} FROM {self._ref(table)} "  # noqa: S608 (allow-listed)
                   f"WHERE run_id = @run_id{READ_ORDER[table]}")
            with self._explained(f"reading run {run_id!r} from {table}", reading=True):
                data = self._run_query(sql, run_param).to_arrow()
            out[table] = sc.conform(table, data.to_pandas())
        return out

    # -- named reads (see Warehouse): GoogleSQL, values as @name STRING parameters --

    def run_row(self, run_id: str) -> pd.DataFrame:
        return self._select(f"SELECT * FROM {self._ref('runs')} "  # noqa: S608 (allow-listed)
                            "WHERE run_id = @run", {"run": run_id})

    def latest_run_id(self) -> str | None:
        latest = self._select(
            f"SELECT run_id FROM {self._ref('runs')} "  # noqa: S608 (allow-listed)
            "ORDER BY COALESCE(started_at, harvested_at) DESC, harvested_at DESC LIMIT 1", {})
        return None if latest.empty else str(latest["run_id"].iloc[0])

    def baseline_candidates(self, model_name: str, exclude_run_id: str) -> pd.DataFrame:
        return self._select(
            "SELECT run_id, model_version, model_source, started_at, params, provenance, "  # noqa: S608
            f"benchmark FROM {self._ref('runs')} "
            "WHERE model_name = @model AND status = 'success' "
            "AND run_id != @run AND started_at IS NOT NULL",
            {"model": model_name, "run": exclude_run_id})

    def client_latencies(self, run_id: str) -> pd.DataFrame:
        return self._select(
            f"SELECT ts, latency_ms, ok FROM {self._ref('requests')} "  # noqa: S608
            "WHERE run_id = @run AND source = 'client'", {"run": run_id})

    def history(self, dag_id: str) -> pd.DataFrame:
        return self._select(
            "SELECT r.run_id, r.model_name, r.model_version, r.status, r.started_at, "  # noqa: S608
            "r.throughput_rps, r.p95_ms, r.p99_ms, r.target, r.load_shape, r.fingerprint, "
            "r.params, r.provenance, v.verdict, v.cost_per_1k "
            f"FROM {self._ref('runs')} AS r "
            f"LEFT JOIN {self._ref('verdicts')} AS v ON r.run_id = v.run_id "
            "WHERE r.started_at IS NOT NULL AND (r.dag_id = @dag OR @dag = '*') "
            "ORDER BY r.started_at", {"dag": dag_id})

    def _select(self, sql: str, params: Mapping[str, str]) -> pd.DataFrame:
        """One of the named reads: ``params`` as STRING query parameters."""
        from google.cloud.bigquery import ScalarQueryParameter

        parameters = [ScalarQueryParameter(name, "STRING", value)
                      for name, value in params.items()]
        with self._explained("query failed", reading=True):
            return self._run_query(sql, parameters).to_arrow().to_pandas()
