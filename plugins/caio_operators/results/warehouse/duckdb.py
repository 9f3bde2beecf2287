"""The local warehouse: a DuckDB file (real, for local runs and tests)."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from caio_operators.results import schema as sc
from caio_operators.results.warehouse.base import (
    TABLES,
    Loader,
    WarehouseError,
    check_one_run,
    check_run_id,
    check_select,
    check_table,
    frame_as_arrow,
    quote,
)


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
        config: dict[str, str | bool | int | float | list[str]] = {
            "enable_external_access": False}
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
        cols = ", ".join(f"{quote(name)} {type_}"
                         for name, type_ in sc.sql_types(table, "duckdb").items())
        return f"CREATE TABLE IF NOT EXISTS {quote(table)} ({cols})"

    def _ensure(self, con) -> None:
        for table in TABLES:
            con.execute(self._ddl(table))
            # a warehouse from before a column was added gets it (null in older rows)
            for name, type_ in sc.sql_types(table, "duckdb").items():
                con.execute(f"ALTER TABLE {quote(table)} ADD COLUMN IF NOT EXISTS "
                            f"{quote(name)} {type_}")

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

    def replacing(self, run_id: str) -> contextlib.AbstractContextManager[Loader]:
        """``replace_run`` as a transaction open for the block: each ``load(table, frame)``
        inserts at once (a ``BatchedTable`` streams), the block's end commits."""
        return self._transaction(run_id, clear=TABLES)

    def _replace(self, tables: Mapping[str, pd.DataFrame], run_id: str,
                 clear: tuple[str, ...]) -> dict[str, int]:
        for name, frame in tables.items():  # every table checked before anything changes
            check_table(name)
            check_one_run(name, frame, check_run_id(run_id))
        with self._transaction(run_id, clear) as load:
            return {name: load(name, frame) for name, frame in tables.items()}

    @contextlib.contextmanager
    def _transaction(self, run_id: str, clear: tuple[str, ...]) -> Iterator[Loader]:
        import duckdb

        check_run_id(run_id)
        with self._connect() as con:
            # under the file's lock, so no other process stored anything here meanwhile
            new = not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = "
                                  "'runs' AND schema_name = 'main'").fetchone()[0]
            self._ensure(con)
            con.execute("BEGIN TRANSACTION")
            try:
                for table in clear:
                    con.execute(f"DELETE FROM {quote(check_table(table))} "  # noqa: S608
                                "WHERE run_id = ?",
                                [run_id])
                yield functools.partial(self._insert, con, run_id)
                con.execute("COMMIT")
            except BaseException as exc:
                # a COMMIT that failed (disk full) has already rolled back: keep its error
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                if new:  # a warehouse this call made holds nothing: leave no file behind
                    self._remove_files()
                if isinstance(exc, duckdb.Error):
                    raise WarehouseError(
                        f"could not store run {run_id!r} in {self.path}, nothing changed: {exc}. "
                        "If a table lacks a column, the warehouse predates this schema; "
                        "migrate it or use a new file.") from exc
                raise

    def _remove_files(self) -> None:
        """Unlink the database file and its WAL while this process still holds the lock: a
        process waiting for it then makes a fresh file, and never loses rows to the unlink."""
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            path.unlink(missing_ok=True)

    @staticmethod
    def _insert(con: Any, run_id: str, name: str, frame: Any) -> int:
        data = frame_as_arrow(name, frame, run_id, stream=True)
        view = f"incoming_{name}"
        con.register(view, data)
        cols = ", ".join(quote(c) for c in sc.columns(name))
        con.execute(f"INSERT INTO {quote(name)} ({cols}) "  # noqa: S608
                    f"SELECT {cols} FROM {quote(view)}")
        con.unregister(view)
        return len(frame)

    def read_run(self, run_id: str) -> dict[str, pd.DataFrame]:
        """Every table's rows for ``run_id``, schema dtypes (empty frames for unknown runs)."""
        order = {"runs": "", "timeseries": " ORDER BY metric, dimension, ts",
                 "requests": " ORDER BY source, ts", "verdicts": "",
                 "comparisons": " ORDER BY metric"}
        out = {}
        with self._connect(read_only=True) as con:
            for table in sc.TABLES:  # the harvested tables; derived ones via query()
                cols = ", ".join(quote(c) for c in sc.columns(table))
                data = con.sql(
                    f"SELECT {cols} FROM {quote(table)} WHERE run_id = ?{order[table]}",  # noqa: S608
                    params=[run_id]).to_arrow_table()
                out[table] = sc.conform(table, data.to_pandas())
        return out

    # -- named reads (see Warehouse): DuckDB's SQL, values as $name parameters --

    def run_row(self, run_id: str) -> pd.DataFrame:
        return self._select("SELECT * FROM runs WHERE run_id = $run", {"run": run_id})

    def latest_run_id(self) -> str | None:
        latest = self._select(
            "SELECT run_id FROM runs "
            "ORDER BY coalesce(started_at, harvested_at) DESC, harvested_at DESC LIMIT 1", {})
        return None if latest.empty else str(latest["run_id"].iloc[0])

    def baseline_candidates(self, model_name: str, exclude_run_id: str) -> pd.DataFrame:
        return self._select(
            "SELECT run_id, model_version, model_source, started_at, params, provenance, "
            "benchmark FROM runs WHERE model_name = $model AND status = 'success' "
            "AND run_id <> $run AND started_at IS NOT NULL",
            {"model": model_name, "run": exclude_run_id})

    def client_latencies(self, run_id: str) -> pd.DataFrame:
        return self._select(
            "SELECT ts, latency_ms, ok FROM requests WHERE run_id = $run AND source = 'client'",
            {"run": run_id})

    def history(self, dag_id: str) -> pd.DataFrame:
        return self._select(
            "SELECT r.run_id, r.model_name, r.model_version, r.status, r.started_at, "
            "r.throughput_rps, r.p95_ms, r.p99_ms, r.target, r.load_shape, r.fingerprint, "
            "r.params, r.provenance, v.verdict, v.cost_per_1k "
            "FROM runs r LEFT JOIN verdicts v ON r.run_id = v.run_id "
            "WHERE r.started_at IS NOT NULL AND (r.dag_id = $dag OR $dag = '*') "
            "ORDER BY r.started_at", {"dag": dag_id})

    def _select(self, sql: str, params: Mapping[str, str]) -> pd.DataFrame:
        """One of the named reads (SQL of this module: not re-checked)."""
        import duckdb

        with self._connect(read_only=True) as con:
            try:
                return con.sql(sql, params=dict(params)).to_arrow_table().to_pandas()
            except duckdb.Error as exc:
                raise WarehouseError(f"query failed: {exc}") from exc

    def query(self, sql: str, params: Mapping[str, Any] | Any = None) -> pd.DataFrame:
        """Run one read-only SELECT over the allow-listed tables, with query parameters:
        ad-hoc SQL on a local warehouse (the analysis uses the named reads above).

        ``params`` is a dict for ``$name`` placeholders (or a list for ``?``). The SQL must
        be a single SELECT that reads only ``runs``, ``timeseries`` and ``requests`` (and
        its own CTEs), with no table functions; the connection is read-only and has no
        file access either way.
        """
        import duckdb

        with self._connect(read_only=True) as con:
            check_select(con, sql)
            try:
                result = con.sql(sql, params=params) if params is not None else con.sql(sql)
                return result.to_arrow_table().to_pandas()
            except duckdb.Error as exc:
                raise WarehouseError(f"query failed: {exc}") from exc


