"""A fake BigQuery client at the client boundary: records calls, runs them on DuckDB."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from typing import Any

PROJECT = "my-project"
DATASET = "bench"

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
