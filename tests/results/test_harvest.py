"""harvest_run end to end on a file:// bucket and a DuckDB file."""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from caio_operators import storage
from caio_operators.layout import RunLayout
from caio_operators.results import schema as sc
from caio_operators.results.harvest import harvest_run
from caio_operators.results.warehouse import open_warehouse


def stored_counts(warehouse_uri, run_id):
    wh = open_warehouse(warehouse_uri)
    return {name: len(frame) for name, frame in wh.read_run(run_id).items()}


def test_harvest_writes_whole_parquet_and_warehouse_rows(small_run, meta, warehouse_uri):
    result = harvest_run(small_run, meta, warehouse_uri)
    assert result["run_id"] == "run-1" and result["skipped_files"] == []
    assert result["counts"]["runs"] == 1 and result["counts"]["requests"] == 12
    assert result["figures"]["p50_ms"] == 30.0 and result["figures"]["failures"] == 2
    assert result["figures"]["status"] == "success"
    for name in sc.TABLES:
        uri = result["tables"][name]
        assert uri == small_run.table_uri(name)
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        assert table.schema.remove_metadata().equals(sc.arrow_schema(name).remove_metadata())
        assert table.num_rows == result["counts"][name]
        assert table.schema.field("run_id").metadata[b"description"]
    # no temp files left beside the tables
    assert [u.rsplit("/", 1)[1] for u in storage.list_files(small_run.tables_dir)] == [
        "requests.parquet", "runs.parquet", "timeseries.parquet"]
    assert stored_counts(warehouse_uri, "run-1") == result["counts"]


def test_reharvest_is_idempotent(small_run, meta, warehouse_uri):
    first = harvest_run(small_run, meta, warehouse_uri)
    second = harvest_run(small_run, meta, warehouse_uri)
    assert first["counts"] == second["counts"]
    assert stored_counts(warehouse_uri, "run-1") == first["counts"]
    runs = open_warehouse(warehouse_uri).query("SELECT count(*) AS n FROM runs")
    assert runs["n"].tolist() == [1]


def test_two_runs_side_by_side_and_a_failed_one(bucket, small_run, meta, warehouse_uri):
    from raw_run import write_small_run

    write_small_run(bucket, "run-2")
    harvest_run(small_run, meta, warehouse_uri)
    harvest_run(RunLayout(bucket, "run-2"), {**meta, "run_id": "run-2", "users": 4},
                warehouse_uri)
    failed = harvest_run(RunLayout(bucket, "run-3"),
                         {**meta, "run_id": "run-3", "status": "failed",
                          "reason": "locust exited 1"}, warehouse_uri)
    assert failed["counts"] == {"runs": 1, "timeseries": 0, "requests": 0}
    assert failed["figures"]["status"] == "failed" and failed["figures"]["p50_ms"] is None
    wh = open_warehouse(warehouse_uri)
    got = wh.query("SELECT run_id, users, status, requests FROM runs ORDER BY run_id")
    assert got.values.tolist() == [["run-1", 2, "success", 8], ["run-2", 4, "success", 8],
                                   ["run-3", 2, "failed", 0]]
    # the failed run's empty tables are still whole Parquet files
    lay3 = RunLayout(bucket, "run-3")
    assert pq.read_table(io.BytesIO(storage.read_bytes(lay3.table_uri("requests")))).num_rows == 0


def test_meta_must_match_the_layout(small_run, meta, warehouse_uri):
    with pytest.raises(ValueError, match="does not match"):
        harvest_run(small_run, {**meta, "run_id": "other"}, warehouse_uri)


@pytest.mark.slow
def test_harvest_one_million_client_records(bucket, meta, warehouse_uri, capsys):
    """Timing is printed, not asserted (the machine is shared)."""
    n, chunks, t0 = 1_000_000, 50, 1_700_000_000.0
    rng = np.random.default_rng(7)
    ts = np.sort(t0 + rng.random(n) * 600.0)  # ten minutes at ~1 667 req/s
    ok = rng.random(n) > 0.01
    table = pa.table({
        "ts": ts, "latency_ms": 20.0 + rng.exponential(10.0, n), "ok": ok.astype(np.int8),
        "status_code": np.where(ok, 200, 503), "signature": ["serving_default"] * n,
        "worker": (np.arange(n) % 8).astype(str), "bytes": np.full(n, 120),
        "error": np.where(ok, "", "HTTP 503"),
    })
    lay = RunLayout(bucket, "big")
    step = n // chunks
    for k in range(chunks):
        buffer = io.BytesIO()
        pacsv.write_csv(table.slice(k * step, step), buffer)
        storage.write_bytes(storage.join(lay.client_requests_dir, f"worker-0-{k:06d}.csv"),
                            buffer.getvalue())
    started = time.perf_counter()
    result = harvest_run(lay, {**meta, "run_id": "big", "started_at": t0,
                               "ended_at": t0 + 600.0}, warehouse_uri)
    elapsed = time.perf_counter() - started
    assert result["counts"]["requests"] == n
    assert result["figures"]["requests"] == n
    assert result["counts"]["timeseries"] == 600 * 5
    with capsys.disabled():
        print(f"\nharvest of {n} client records in {chunks} files: {elapsed:.2f} s "
              f"{result['seconds']}")
