"""The warehouse: where runs' tables accumulate for analysis and comparison.

Chosen by URI scheme through :func:`open_warehouse`:

- ``duckdb:///abs/path.duckdb`` -> :class:`DuckDBWarehouse` (local, real);
- ``bigquery://project/dataset[?location=EU]`` -> :class:`~.bigquery.BigQueryWarehouse`
  (cloud; google-cloud-bigquery is imported only then).

The interface is deliberately narrow so BigQuery fits behind it: ``ensure_schema()``,
``replace_run(tables, run_id)``, ``replace_tables``, ``read_run(run_id)`` and the analysis's
named reads (``run_row``, ``latest_run_id``, ``baseline_candidates``, ``client_latencies``,
``history``), each written in its backend's own SQL. ``DuckDBWarehouse.query(sql, params)``
runs ad-hoc SELECTs on a local warehouse. SQL text is never built from values: values
travel as query parameters and table names come from the schema's allow-list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from caio_operators.results.warehouse.base import (
    SCHEMES,
    TABLES,
    Warehouse,
    WarehouseError,
    check_one_run,
    check_select,
    check_table,
    quote,
    run_frames_as_arrow,
)
from caio_operators.results.warehouse.duckdb import DuckDBWarehouse

__all__ = ["SCHEMES", "TABLES", "DuckDBWarehouse", "Warehouse", "WarehouseError",
           "check_one_run", "check_select", "check_table", "open_warehouse", "quote",
           "run_frames_as_arrow"]


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
        from caio_operators.results.warehouse.bigquery import BigQueryWarehouse

        return BigQueryWarehouse.from_uri(uri, **options)
    raise WarehouseError(
        f"unknown warehouse URI {uri!r}; use duckdb:///abs/path.duckdb or "
        "bigquery://project/dataset")
