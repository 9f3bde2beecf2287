"""Results: the tidy schema, consolidation of raw records, Parquet and warehouse storage.

Modules are imported on use (pyarrow, pandas, duckdb are heavy); DAG files never import them.
"""
