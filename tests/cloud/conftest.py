"""Fixtures for the cloud store tests: a real local GCS emulator and a fake BigQuery client.

``gcs`` starts ``gcp-storage-emulator`` (in memory, on 127.0.0.1 and a free port) once per
session and points gcsfs at it through ``STORAGE_EMULATOR_HOST``, so ``storage.py`` reaches
it through exactly the production code path (``fsspec.core.url_to_fs("gs://...")``).

``FakeBigQuery`` stands in for ``google.cloud.bigquery.Client`` at the client boundary. It
records every call and keeps the tables in an in-memory DuckDB catalogue named after the
project, so DELETEs, loads and SELECTs really change and return rows. It understands only
the GoogleSQL the adapter emits (backticked ``project.dataset.table`` ids, ``@params``,
backslash-escaped strings) and fails loudly on anything else, e.g. a leftover ``$name``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

RESULTS_TESTS = Path(__file__).resolve().parents[1] / "results"
if str(RESULTS_TESTS) not in sys.path:
    sys.path.append(str(RESULTS_TESTS))  # raw_run.py: the hand-written run

EMULATOR_BUCKET = "caio-test"
PROJECT = "my-project"
DATASET = "bench"


# --- GCS emulator -------------------------------------------------------------------------------

class _RequestLog(logging.Handler):
    """The emulator logs one line per HTTP request; keep them to assert on."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith('"'):
            self.lines.append(message)


@dataclass
class Emulator:
    host: str
    port: int
    bucket: str
    log: _RequestLog = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def requests(self) -> list[str]:
        """Request lines since the last ``clear()``, e.g. ``POST /upload/... HTTP/1.1``."""
        return [line.split('"')[1] for line in self.log.lines]

    def clear(self) -> None:
        self.log.lines.clear()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _forget_gcsfs_instances() -> None:
    # fsspec caches filesystem instances; one made for another endpoint must not leak in/out
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
    gcsfs.core.GCSFileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def gcs():
    """A running in-memory GCS emulator with one bucket; gcsfs talks to it."""
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    emulator_log = logging.getLogger("gcp_storage_emulator")
    handler = _RequestLog()
    saved = (emulator_log.level, emulator_log.propagate)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        # gcsfs >= 2025.x asks the Storage Control API (gRPC, real credentials) for the bucket
        # type before each call; the emulator has no such API. Only read at gcsfs import.
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        mp.setenv("NO_GCE_CHECK", "true")  # no metadata-server probe: straight to anonymous
        server = create_server("127.0.0.1", port, in_memory=True, default_bucket=EMULATOR_BUCKET)
        emulator_log.addHandler(handler)
        emulator_log.setLevel(logging.INFO)
        emulator_log.propagate = False
        server.start()
        _forget_gcsfs_instances()
        try:
            yield Emulator("127.0.0.1", port, EMULATOR_BUCKET, handler)
        finally:
            server.stop()
            emulator_log.removeHandler(handler)
            emulator_log.setLevel(saved[0])
            emulator_log.propagate = saved[1]
            _forget_gcsfs_instances()


@pytest.fixture
def gs_bucket(gcs) -> str:
    """A fresh gs:// prefix in the emulator's bucket (buckets are prefixes here too)."""
    return f"gs://{gcs.bucket}/t-{uuid.uuid4().hex[:10]}"


# --- fake BigQuery client ------------------------------------------------------------------------

_DUCK_TYPES = {"STRING": "VARCHAR", "INT64": "BIGINT", "INTEGER": "BIGINT", "FLOAT64": "DOUBLE",
               "FLOAT": "DOUBLE", "BOOL": "BOOLEAN", "BOOLEAN": "BOOLEAN",
               "TIMESTAMP": "TIMESTAMPTZ"}
# what tables.get answers: the API speaks legacy type names
_LEGACY = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN"}
_PARAM_TYPES = {str: "STRING", int: "INT64", float: "FLOAT64", bool: "BOOL"}
# one GoogleSQL token of interest: a backticked path, a '...' string, an @param, or $/?
_BQ_TOKEN = re.compile(r"`((?:[^`\\]|\\.)*)`|'((?:[^'\\]|\\.)*)'|@([A-Za-z_]\w*)|([$?])")


@dataclass
class Call:
    method: str
    args: dict[str, Any]


class FakeRows:
    def __init__(self, table):
        self._table = table

    def to_arrow(self, **_):
        return self._table


class FakeJob:
    def __init__(self, rows=None, output_rows=None, num_dml_affected_rows=None):
        self._rows = rows
        self.output_rows = output_rows
        self.num_dml_affected_rows = num_dml_affected_rows
        self.timeouts: list[Any] = []

    def result(self, timeout=None):
        self.timeouts.append(timeout)
        return FakeRows(self._rows)


class FakeBigQuery:
    """``google.cloud.bigquery.Client`` at the boundary; state lives in DuckDB."""

    def __init__(self, project: str = PROJECT):
        import duckdb

        self.project = project
        self.calls: list[Call] = []
        self.datasets: dict[str, Any] = {}
        self.tables: dict[str, dict] = {}  # table id -> API representation
        self.fail: dict[str, Exception] = {}  # method -> error raised by its next call
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute(f'ATTACH \':memory:\' AS "{project}"')

    # helpers for tests
    def named(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def rows(self, table: str, run_id: str | None = None) -> int:
        where, params = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
        sql = f"SELECT count(*) FROM {self._duck(f'{self.project}.{DATASET}.{table}')} {where}"
        return self.con.execute(sql, params).fetchall()[0][0]

    def _record(self, method: str, **args) -> None:
        self.calls.append(Call(method, args))
        error = self.fail.pop(method, None)
        if error is not None:
            raise error

    @staticmethod
    def _duck(table_id: str) -> str:
        return ".".join('"' + part + '"' for part in table_id.split("."))

    # datasets and tables
    def get_dataset(self, dataset_ref, **kw):
        self._record("get_dataset", ref=str(dataset_ref), **kw)
        from google.api_core.exceptions import NotFound

        if str(dataset_ref) not in self.datasets:
            raise NotFound(f"Not found: Dataset {dataset_ref}")
        return self.datasets[str(dataset_ref)]

    def create_dataset(self, dataset, exists_ok=False, **kw):
        self._record("create_dataset", dataset=dataset, exists_ok=exists_ok, **kw)
        from google.api_core.exceptions import Conflict

        ref = f"{dataset.project}.{dataset.dataset_id}"
        if ref in self.datasets:
            if not exists_ok:
                raise Conflict(f"Already Exists: Dataset {ref}")
            return self.datasets[ref]
        self.datasets[ref] = dataset
        self.con.execute(f'CREATE SCHEMA "{dataset.project}"."{dataset.dataset_id}"')
        return dataset

    def get_table(self, table_ref, **kw):
        self._record("get_table", ref=str(table_ref), **kw)
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        if str(table_ref) not in self.tables:
            raise NotFound(f"Not found: Table {table_ref}")
        return bigquery.Table.from_api_repr(self.tables[str(table_ref)])

    def create_table(self, table, exists_ok=False, **kw):
        self._record("create_table", table=table, exists_ok=exists_ok, **kw)
        from google.api_core.exceptions import Conflict, NotFound
        from google.cloud import bigquery

        ref = f"{table.project}.{table.dataset_id}.{table.table_id}"
        if f"{table.project}.{table.dataset_id}" not in self.datasets:
            raise NotFound(f"Not found: Dataset {table.project}:{table.dataset_id}")
        if ref in self.tables:
            if not exists_ok:
                raise Conflict(f"Already Exists: Table {ref}")
            return bigquery.Table.from_api_repr(self.tables[ref])
        api = table.to_api_repr()
        for fld in api["schema"]["fields"]:
            fld["type"] = _LEGACY.get(fld["type"], fld["type"])
        self.tables[ref] = api
        cols = ", ".join(f'"{f.name}" {_DUCK_TYPES[f.field_type]}' for f in table.schema)
        self.con.execute(f"CREATE TABLE {self._duck(ref)} ({cols})")
        return bigquery.Table.from_api_repr(api)

    # jobs
    def _to_duckdb(self, sql: str, params: dict[str, Any]) -> str:
        used: set[str] = set()

        def replace(match: re.Match) -> str:
            path, text, name, bare = match.groups()
            if bare:
                raise AssertionError(f"DuckDB placeholder {bare!r} left in BigQuery SQL: {sql}")
            if name:
                assert name in params, f"@{name} has no query parameter"
                used.add(name)
                return "$" + name
            if text is not None:
                value = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), text)
                return "'" + value.replace("'", "''") + "'"
            parts = path.split(".")
            if len(parts) == 3:
                assert path in self.tables, f"query names unknown table {path}"
                return self._duck(path)
            assert len(parts) == 1, f"unexpected identifier `{path}`"
            return '"' + path + '"'

        out = _BQ_TOKEN.sub(replace, sql)
        assert used == set(params), f"parameters {set(params) - used} unused in: {sql}"
        return out

    def query(self, sql, job_config=None, location=None, job_id_prefix=None, **kw):
        self._record("query", sql=sql, job_config=job_config, location=location,
                     job_id_prefix=job_id_prefix, **kw)
        assert job_config is not None and job_config.use_legacy_sql is False
        params = {}
        for param in job_config.query_parameters:
            expected = _PARAM_TYPES.get(type(param.value))
            if expected:
                assert param.type_ == expected, f"{param.name}: {param.type_} for {param.value!r}"
            params[param.name] = param.value
        duck = self._to_duckdb(sql, params)
        if duck.lstrip().upper().startswith("DELETE"):
            deleted = self.con.execute(duck, params or None).fetchall()[0][0]
            return FakeJob(num_dml_affected_rows=deleted)
        return FakeJob(rows=self.con.sql(duck, params=params or None).to_arrow_table())

    def load_table_from_file(self, file_obj, destination, job_config=None, location=None,
                             job_id_prefix=None, size=None, **kw):
        import pyarrow.parquet as pq

        data = file_obj.read()
        self._record("load_table_from_file", destination=str(destination), job_config=job_config,
                     location=location, size=size, data=data, **kw)
        assert size is None or size == len(data)
        assert str(destination) in self.tables, f"load into missing table {destination}"
        table = pq.read_table(io.BytesIO(data))
        wanted = [(f.name, f.field_type) for f in job_config.schema]
        have = [(f["name"], f["type"]) for f in self.tables[str(destination)]["schema"]["fields"]]
        assert [n for n, _ in wanted] == [n for n, _ in have] == table.column_names
        self.con.register("incoming", table)
        cols = ", ".join(f'"{c}"' for c in table.column_names)
        with contextlib.ExitStack() as stack:
            stack.callback(self.con.unregister, "incoming")
            self.con.execute(f"INSERT INTO {self._duck(str(destination))} ({cols}) "
                             f"SELECT {cols} FROM incoming")
        return FakeJob(output_rows=table.num_rows)


@pytest.fixture
def fake_bq() -> FakeBigQuery:
    return FakeBigQuery()


@pytest.fixture
def hook_clients(monkeypatch, fake_bq) -> list[dict]:
    """Route the Google provider's ``BigQueryHook.get_client`` to ``fake_bq``.

    The hook itself is real (it reads the Airflow connection, defined here the way
    Composer or a user would: ``AIRFLOW_CONN_<ID>``); each call is recorded.
    """
    from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook

    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
                       '{"conn_type": "google_cloud_platform", "extra": {"project": "other"}}')
    made: list[dict] = []

    def get_client(self, project_id=None, location=None):
        made.append({"gcp_conn_id": self.gcp_conn_id, "impersonation_chain":
                     self.impersonation_chain, "project_id": project_id, "location": location})
        return fake_bq

    monkeypatch.setattr(BigQueryHook, "get_client", get_client)
    return made
