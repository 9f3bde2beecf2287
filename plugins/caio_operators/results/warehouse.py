"""The warehouse: where runs' tables accumulate for analysis and comparison.

Chosen by URI scheme through :func:`open_warehouse`:

- ``duckdb:///abs/path.duckdb`` -> :class:`DuckDBWarehouse` (local, real);
- ``bigquery://project/dataset[?location=EU]`` -> :class:`~caio_operators.results.bigquery.
  BigQueryWarehouse` (cloud; google-cloud-bigquery is imported only then).

The interface is deliberately narrow so BigQuery fits behind it: ``ensure_schema()``,
``replace_run(tables, run_id)``, ``read_run(run_id)`` and ``query(sql, params)``. SQL text
is never built from values: values travel as query parameters and table names come from
the schema's allow-list.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from caio_operators.results import schema as sc

TABLES = tuple(sc.ALL_TABLES)  # the allow-list of table names
SCHEMES = ("duckdb", "bigquery")


class WarehouseError(RuntimeError):
    """The warehouse cannot do what was asked; the message says what and how to fix it."""


class Warehouse(Protocol):
    uri: str

    def ensure_schema(self) -> None: ...

    def replace_run(self, tables: Mapping[str, pd.DataFrame], run_id: str) -> dict[str, int]: ...

    def replace_tables(self, tables: Mapping[str, pd.DataFrame], run_id: str
                       ) -> dict[str, int]: ...

    def read_run(self, run_id: str) -> dict[str, pd.DataFrame]: ...

    def query(self, sql: str, params: Mapping[str, Any] | Any = None) -> pd.DataFrame: ...


def open_warehouse(uri: str, **options: Any) -> Warehouse:
    """The warehouse behind ``uri`` (``duckdb:///abs/path.duckdb`` or ``bigquery://p/d``).

    ``options`` are for BigQuery (``gcp_conn_id``, ``impersonation_chain``, ``location``,
    ``client``); DuckDB needs none and ignores them, so callers can pass them always.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "duckdb":
        if parsed.netloc or not parsed.path.startswith("/"):
            raise WarehouseError(
                f"warehouse URI {uri!r} must name an absolute file: duckdb:///abs/path.duckdb "
                "(three slashes)")
        return DuckDBWarehouse(Path(parsed.path), uri=uri)
    if parsed.scheme == "bigquery":
        from caio_operators.results.bigquery import BigQueryWarehouse

        return BigQueryWarehouse.from_uri(uri, **options)
    raise WarehouseError(
        f"unknown warehouse URI {uri!r}; use duckdb:///abs/path.duckdb or "
        "bigquery://project/dataset")


def _check_table(name: str) -> str:
    if name not in TABLES:
        raise WarehouseError(f"unknown table {name!r}; allowed tables are {', '.join(TABLES)}")
    return name


def _quote(identifier: str) -> str:
    # identifiers come only from the schema module; quoting is belt and braces
    return '"' + identifier.replace('"', '""') + '"'


def _check_one_run(name: str, frame, run_id: str) -> None:
    if not len(frame):
        return
    if isinstance(frame, sc.BatchedTable):
        ids = [frame.run_id]
    elif isinstance(frame, pa.Table):
        ids = pc.unique(frame["run_id"]).to_pylist() if "run_id" in frame.column_names else []
    else:
        ids = frame["run_id"].unique() if "run_id" in frame else []
    if len(ids) != 1 or ids[0] != run_id:
        raise WarehouseError(
            f"table {name!r} holds rows for run_ids {list(ids)[:5]}, not only {run_id!r}; "
            "replace_run writes exactly one run")


def run_frames_as_arrow(tables, run_id: str, stream: bool = False) -> dict:
    """Check ``tables`` (allow-listed names, rows of ``run_id`` only) and convert each to
    Arrow with the schema's types: what every warehouse's ``replace_run`` loads.

    ``stream``: a ``BatchedTable`` stays a ``RecordBatchReader`` (bounded memory)."""
    if not run_id:
        raise WarehouseError("replace_run needs a run_id")
    arrow = {}
    for name, frame in tables.items():
        _check_table(name)
        _check_one_run(name, frame, run_id)
        arrow[name] = frame.reader() if stream and isinstance(frame, sc.BatchedTable) \
            else sc.to_arrow(name, frame)
    return arrow


class DuckDBWarehouse:
    """A DuckDB file. DuckDB locks the file per process, so each call opens, works, closes.

    Another process holding the lock (a parallel harvest) is waited for, up to
    ``lock_timeout_s``, because calls are short.
    """

    def __init__(self, path: Path | str, uri: str | None = None, lock_timeout_s: float = 60.0):
        self.path = Path(path)
        self.uri = uri or f"duckdb://{self.path}"
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"DuckDBWarehouse({str(self.path)!r})"

    def _open(self, read_only: bool):
        import duckdb

        # no file access from SQL: statements may only touch the warehouse's own tables
        config = {"enable_external_access": False}
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=config)
            except duckdb.IOException as exc:
                locked = "lock" in str(exc).lower()
                if not locked or time.monotonic() + delay > deadline:
                    hint = (f"another process held its lock for {self.lock_timeout_s:g} s; "
                            "retry when it is done" if locked else "check the path")
                    raise WarehouseError(f"cannot open warehouse {self.path}: {exc}. "
                                         f"{hint}.") from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    @contextlib.contextmanager
    def _connect(self, read_only: bool = False) -> Iterator[Any]:
        if read_only and not self.path.exists():
            raise WarehouseError(
                f"warehouse {self.path} does not exist yet; harvest a run into it first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._open(read_only)
        try:
            con.execute("SET TimeZone = 'UTC'")
            yield con
        finally:
            con.close()

    @staticmethod
    def _ddl(table: str) -> str:
        cols = ", ".join(f"{_quote(name)} {type_}"
                         for name, type_ in sc.sql_types(table, "duckdb").items())
        return f"CREATE TABLE IF NOT EXISTS {_quote(table)} ({cols})"

    def _ensure(self, con) -> None:
        for table in TABLES:
            con.execute(self._ddl(table))
            # a warehouse from before a column was added gets it (null in older rows)
            for name, type_ in sc.sql_types(table, "duckdb").items():
                con.execute(f"ALTER TABLE {_quote(table)} ADD COLUMN IF NOT EXISTS "
                            f"{_quote(name)} {type_}")

    def ensure_schema(self) -> None:
        """Create the tables if missing (idempotent)."""
        with self._connect() as con:
            self._ensure(con)

    def replace_run(self, tables: Mapping[str, pd.DataFrame], run_id: str) -> dict[str, int]:
        """Replace everything stored for ``run_id`` with ``tables``, in one transaction.

        Rows of ``run_id`` are deleted from every table (also from tables not given), then
        the given frames are inserted, so harvesting a run twice never duplicates it.
        Returns the rows inserted per table.
        """
        return self._replace(tables, run_id, clear=TABLES)

    def replace_tables(self, tables: Mapping[str, pd.DataFrame], run_id: str
                       ) -> dict[str, int]:
        """Replace ``run_id``'s rows in the given tables only (the analysis's derived
        tables), in one transaction; the run's other rows stay."""
        return self._replace(tables, run_id, clear=tuple(tables))

    def _replace(self, tables: Mapping[str, pd.DataFrame], run_id: str,
                 clear: tuple[str, ...]) -> dict[str, int]:
        arrow = run_frames_as_arrow(tables, run_id, stream=True)
        import duckdb

        counts = {}
        with self._connect() as con:
            self._ensure(con)
            con.execute("BEGIN TRANSACTION")
            try:
                for table in clear:
                    con.execute(f"DELETE FROM {_quote(_check_table(table))} "  # noqa: S608
                                "WHERE run_id = ?",
                                [run_id])
                for name, data in arrow.items():
                    view = f"incoming_{name}"
                    con.register(view, data)
                    cols = ", ".join(_quote(c) for c in sc.columns(name))
                    con.execute(f"INSERT INTO {_quote(name)} ({cols}) "  # noqa: S608
                                f"SELECT {cols} FROM {_quote(view)}")
                    con.unregister(view)
                    counts[name] = len(tables[name])
                con.execute("COMMIT")
            except BaseException as exc:
                # a COMMIT that failed (disk full) has already rolled back: keep its error
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                if isinstance(exc, duckdb.Error):
                    raise WarehouseError(
                        f"could not store run {run_id!r} in {self.path}, nothing changed: {exc}. "
                        "If a table lacks a column, the warehouse predates this schema; "
                        "migrate it or use a new file.") from exc
                raise
        return counts

    def read_run(self, run_id: str) -> dict[str, pd.DataFrame]:
        """Every table's rows for ``run_id``, schema dtypes (empty frames for unknown runs)."""
        order = {"runs": "", "timeseries": " ORDER BY metric, dimension, ts",
                 "requests": " ORDER BY source, ts", "verdicts": "",
                 "comparisons": " ORDER BY metric"}
        out = {}
        with self._connect(read_only=True) as con:
            for table in sc.TABLES:  # the harvested tables; derived ones via query()
                cols = ", ".join(_quote(c) for c in sc.columns(table))
                data = con.sql(
                    f"SELECT {cols} FROM {_quote(table)} WHERE run_id = ?{order[table]}",  # noqa: S608
                    params=[run_id]).to_arrow_table()
                out[table] = sc.conform(table, data.to_pandas())
        return out

    def query(self, sql: str, params: Mapping[str, Any] | Any = None) -> pd.DataFrame:
        """Run one read-only SELECT over the allow-listed tables, with query parameters.

        ``params`` is a dict for ``$name`` placeholders (or a list for ``?``). The SQL must
        be a single SELECT that reads only ``runs``, ``timeseries`` and ``requests`` (and
        its own CTEs), with no table functions; the connection is read-only and has no
        file access either way.
        """
        import duckdb

        with self._connect(read_only=True) as con:
            _check_select(con, sql)
            try:
                result = con.sql(sql, params=params) if params is not None else con.sql(sql)
                return result.to_arrow_table().to_pandas()
            except duckdb.Error as exc:
                raise WarehouseError(f"query failed: {exc}") from exc


def _check_select(con, sql: str) -> None:
    """Reject anything but one SELECT over allow-listed tables (parsed, never executed)."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise WarehouseError(f"cannot parse query: {exc}") from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise WarehouseError("query() runs exactly one SELECT statement")
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    if tree.get("error"):
        raise WarehouseError(f"cannot parse query: {tree.get('error_message')}")
    tables, ctes, functions = set(), set(), set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE":
                qualifier = node.get("schema_name") or node.get("catalog_name") or ""
                name = node.get("table_name")
                tables.add(name if qualifier in ("", "main") else f"{qualifier}.{name}")
            elif node.get("type") == "TABLE_FUNCTION":
                functions.add(str((node.get("function") or {}).get("function_name")))
            for entry in (node.get("cte_map") or {}).get("map", []):
                ctes.add(entry.get("key"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    if functions:
        raise WarehouseError(f"query() does not allow table functions ({sorted(functions)})")
    unknown = sorted(t for t in tables - ctes if t not in TABLES)
    if unknown:
        raise WarehouseError(
            f"query names tables {unknown}; allowed tables are {', '.join(TABLES)}")
