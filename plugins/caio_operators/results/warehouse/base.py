"""What every warehouse shares: the interface (writes, and the analysis's named reads that
each backend writes in its own SQL), its error, and the checks that keep SQL text free of
values (allow-listed tables, one run per replace, one SELECT per ad-hoc DuckDB query)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from caio_operators.results import schema as sc

TABLES = tuple(sc.ALL_TABLES)  # the allow-list of table names
SCHEMES = ("duckdb", "bigquery")
#: ``load(table, frame)`` inside ``Warehouse.replacing``: adds a table's rows, returns
#: how many (a frame is a DataFrame, an Arrow table or a ``schema.BatchedTable``)
Loader = Callable[[str, Any], int]


class WarehouseError(RuntimeError):
    """The warehouse cannot do what was asked; the message says what and how to fix it."""


class Warehouse(Protocol):
    uri: str

    def ensure_schema(self) -> None: ...

    def replace_run(self, tables: Mapping[str, pd.DataFrame], run_id: str) -> dict[str, int]: ...

    def replacing(self, run_id: str) -> AbstractContextManager[Loader]:
        """``replace_run`` with the tables given one by one as they are ready: the run's
        rows go from every table, each ``load(table, frame)`` adds a table's (a
        ``BatchedTable`` is read once, as it is loaded), and the block's end stores them
        all; a block that raises stores nothing."""
        ...

    def replace_tables(self, tables: Mapping[str, pd.DataFrame], run_id: str
                       ) -> dict[str, int]: ...

    def read_run(self, run_id: str) -> dict[str, pd.DataFrame]: ...

    # The analysis's questions, each written in the backend's own SQL (values always travel
    # as query parameters). Frames come back with the columns named in each docstring.

    def run_row(self, run_id: str) -> pd.DataFrame:
        """The ``runs`` row of ``run_id``, every column (no row when absent)."""
        ...

    def latest_run_id(self) -> str | None:
        """The run started (or, never started, harvested) last; None in an empty warehouse."""
        ...

    def baseline_candidates(self, model_name: str, exclude_run_id: str) -> pd.DataFrame:
        """Every successful, started run of ``model_name`` but ``exclude_run_id``: its
        ``run_id, model_version, model_source, started_at, params, provenance, benchmark``.
        Which one is comparable is decided in Python (``benchmark.pick_baseline``), because
        rows harvested before the fingerprint existed have only their params."""
        ...

    def client_latencies(self, run_id: str) -> pd.DataFrame:
        """``ts, latency_ms, ok`` of the run's client-side requests."""
        ...

    def history(self, dag_id: str) -> pd.DataFrame:
        """Every started run of ``dag_id`` (``*``: of every DAG) with its verdict, oldest
        first: ``run_id, model_name, model_version, status, started_at, throughput_rps,
        p95_ms, p99_ms, target, load_shape, fingerprint, params, provenance, verdict,
        cost_per_1k``."""
        ...


def check_table(name: str) -> str:
    if name not in TABLES:
        raise WarehouseError(f"unknown table {name!r}; allowed tables are {', '.join(TABLES)}")
    return name


def quote(identifier: str) -> str:
    # identifiers come only from the schema module; quoting is belt and braces
    return '"' + identifier.replace('"', '""') + '"'


def check_one_run(name: str, frame, run_id: str) -> None:
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


def check_run_id(run_id: str) -> str:
    if not run_id:
        raise WarehouseError("replace_run needs a run_id")
    return run_id


def frame_as_arrow(name: str, frame: Any, run_id: str, stream: bool = False) -> Any:
    """Check one table (an allow-listed name, rows of ``run_id`` only) and convert it to
    Arrow with the schema's types: what a warehouse loads.

    ``stream``: a ``BatchedTable`` stays a ``RecordBatchReader`` (bounded memory)."""
    check_table(name)
    check_one_run(name, frame, check_run_id(run_id))
    return frame.reader() if stream and isinstance(frame, sc.BatchedTable) \
        else sc.to_arrow(name, frame)


def run_frames_as_arrow(tables, run_id: str, stream: bool = False) -> dict:
    """``frame_as_arrow`` of each of ``tables``: what every warehouse's ``replace_run``
    loads."""
    check_run_id(run_id)
    return {name: frame_as_arrow(name, frame, run_id, stream) for name, frame in tables.items()}


def sql_tree(con: Any, sql: str) -> dict[str, Any]:
    """DuckDB's parse tree of ``sql`` as JSON (parsed, never executed)."""
    return json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])


def tree_nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every object of a parse tree, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from tree_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from tree_nodes(value)


def check_select(con, sql: str) -> None:
    """Reject anything but one SELECT over allow-listed tables (parsed, never executed)."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise WarehouseError(f"cannot parse query: {exc}") from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise WarehouseError("query() runs exactly one SELECT statement")
    tree = sql_tree(con, sql)
    if tree.get("error"):
        raise WarehouseError(f"cannot parse query: {tree.get('error_message')}")
    tables: set[str] = set()
    ctes: set[str] = set()
    functions: set[str] = set()
    for node in tree_nodes(tree):
        if node.get("type") == "BASE_TABLE":
            qualifier = node.get("schema_name") or node.get("catalog_name") or ""
            name = str(node.get("table_name"))
            tables.add(name if qualifier in ("", "main") else f"{qualifier}.{name}")
        elif node.get("type") == "TABLE_FUNCTION":
            functions.add(str((node.get("function") or {}).get("function_name")))
        ctes.update(str(entry.get("key")) for entry in (node.get("cte_map") or {}).get("map", []))
    if functions:
        raise WarehouseError(f"query() does not allow table functions ({sorted(functions)})")
    unknown = sorted(t for t in tables - ctes if t not in TABLES)
    if unknown:
        raise WarehouseError(
            f"query names tables {unknown}; allowed tables are {', '.join(TABLES)}")
