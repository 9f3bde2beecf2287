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


def write_histograms(layout: RunLayout) -> None:
    """The small run's successful client latencies (10, 30, 40 ms at 1000 s; 20 at 1001;
    50 at 1002; 60 at 1003) and its failures, as two workers' histogram files."""
    from caio_operators.results import hdr

    def line(ts, worker, ok_ms, failed):
        hist = hdr.new_histogram()
        hdr.record_many_ms(hist, ok_ms)
        return hdr.record_line(ts=ts, interval_s=1.0, worker=worker,
                               signature="serving_default", ok=len(ok_ms), failed=failed,
                               hist=hist)

    w1 = [line(1000.0, "1", [10.0, 30.0], 0), line(1001.0, "1", [20.0], 1)]
    w2 = [line(1000.0, "2", [40.0], 0), line(1002.0, "2", [50.0], 0),
          line(1003.0, "2", [60.0], 1)]
    for worker, lines in (("1", w1), ("2", w2)):
        storage.write_text(storage.join(hdr.histograms_dir(layout),
                                        f"worker-{worker}-000000.jsonl"),
                           "\n".join(lines) + "\n")


def test_latency_percentiles_come_from_histograms_when_the_run_has_them(
        small_run, meta, warehouse_uri):
    plain = harvest_run(small_run, meta, warehouse_uri)
    assert plain["latency_source"] == "records" and plain["figures"]["p50_ms"] == 30.0
    write_histograms(small_run)
    result = harvest_run(small_run, meta, warehouse_uri)
    assert result["latency_source"] == "histograms" and result["skipped_files"] == []
    # the top of the HDR bucket holding the exact value: 30 ms -> 30.079 ms (< 1% above)
    figures = result["figures"]
    assert (figures["p50_ms"], figures["p95_ms"], figures["p99_ms"]) == (30.079, 60.159, 60.159)
    assert (figures["requests"], figures["failures"]) == (8, 2)  # counts: raw records
    stored = open_warehouse(warehouse_uri).read_run("run-1")
    runs = stored["runs"].iloc[0]
    assert (runs["p90_ms"], runs["p999_ms"], runs["max_ms"]) == (60.159, 60.159, 60.159)
    assert runs["mean_ms"] == pytest.approx(35.0)  # the exact mean of the records
    series = stored["timeseries"]
    p50 = series[(series["metric"] == sc.CLIENT_LATENCY_P50_MS)].sort_values("ts")
    p99 = series[(series["metric"] == sc.CLIENT_LATENCY_P99_MS)].sort_values("ts")
    assert p50["value"].tolist() == [30.079, 20.095, 50.175, 60.159]
    assert p99["value"].tolist() == [40.191, 20.095, 50.175, 60.159]
    assert [t.timestamp() for t in p50["ts"]] == [1000.0, 1001.0, 1002.0, 1003.0]
    assert set(p50["dimension"]) == {"all"}
    # other series are untouched
    rate = series[series["metric"] == sc.REQUEST_RATE_RPS]
    assert rate["value"].sum() == 8


def test_a_corrupt_histogram_file_is_skipped(small_run, meta, warehouse_uri):
    write_histograms(small_run)
    bad = storage.join(small_run.load_dir, "histograms", "worker-3-000000.jsonl")
    storage.write_text(bad, '{"ts": 1000.0, "hist": "nope"}\n')
    result = harvest_run(small_run, meta, warehouse_uri)
    assert result["skipped_files"] == [bad]
    assert result["figures"]["p50_ms"] == 30.079


def test_a_load_stopped_before_its_result_is_told_from_one_that_never_ran(tmp_path, repo):
    """A load task killed or marked failed mid-run writes no result.json: its row must not
    say the load never ran (what the scheduler tier's mark-failed case first showed)."""
    from caio_operators.pipeline import run_meta
    from caio_operators.spec import param_schema, validate_params

    spec = validate_params({"bucket": f"file://{tmp_path}/bucket"},
                           param_schema(tmp_path, repo / "test_images"), dag_id="d",
                           airflow_run_id="r")
    assert "did not run" in run_meta(spec, None)["reason"]
    storage.write_text(spec.layout.config_uri, "{}")  # what the load writes as it starts
    meta = run_meta(spec, None)
    assert meta["status"] == "failed"
    assert meta["reason"].startswith("the load started but wrote no result")


def test_requests_in_many_batches_reach_parquet_and_warehouse_alike(
        small_run, meta, warehouse_uri, monkeypatch):
    """RunStore hands each batch from the Parquet writer to the warehouse's insert."""
    from caio_operators.results import records

    monkeypatch.setattr(records, "REQUEST_BATCH_ROWS", 5)  # 12 rows: 3 + 2 batches
    result = harvest_run(small_run, meta, warehouse_uri)
    parquet = pq.read_table(io.BytesIO(storage.read_bytes(result["tables"]["requests"])))
    stored = open_warehouse(warehouse_uri).read_run("run-1")["requests"]
    assert parquet.num_rows == len(stored) == result["counts"]["requests"] == 12
    assert sorted(parquet.to_pandas()["latency_ms"]) == sorted(stored["latency_ms"])


def test_a_parquet_failure_raises_and_rolls_the_warehouse_back(
        small_run, meta, warehouse_uri, monkeypatch):
    harvest_run(small_run, meta, warehouse_uri)  # users 2
    write_bytes = storage.write_bytes

    def failing(uri, data):
        if uri.endswith("requests.parquet"):
            raise storage.StorageError(f"cannot write {uri}: disk full")
        return write_bytes(uri, data)

    monkeypatch.setattr(storage, "write_bytes", failing)
    with pytest.raises(storage.StorageError, match="disk full"):
        harvest_run(small_run, {**meta, "users": 4}, warehouse_uri)
    wh = open_warehouse(warehouse_uri)
    assert wh.query("SELECT users FROM runs")["users"].tolist() == [2]
    assert stored_counts(warehouse_uri, "run-1")["requests"] == 12


@pytest.mark.parametrize("where", ["open", "insert"])
def test_a_warehouse_failure_raises_once_the_parquet_files_are_stored(
        small_run, meta, warehouse_uri, monkeypatch, where):
    from caio_operators.results.warehouse import DuckDBWarehouse, WarehouseError

    monkeypatch.setattr("caio_operators.results.records.REQUEST_BATCH_ROWS", 5)
    if where == "open":
        def failing(self, run_id):
            raise WarehouseError("cannot open warehouse: locked")

        monkeypatch.setattr(DuckDBWarehouse, "replacing", failing)
    else:  # mid-stream: the Parquet thread still has batches to hand over
        insert = DuckDBWarehouse._insert

        def failing_insert(con, run_id, name, frame):
            if name == "requests":
                next(iter(frame.batches()))
                raise WarehouseError("disk full")
            return insert(con, run_id, name, frame)

        monkeypatch.setattr(DuckDBWarehouse, "_insert", staticmethod(failing_insert))
    with pytest.raises(WarehouseError, match="locked" if where == "open" else "disk full"):
        harvest_run(small_run, meta, warehouse_uri)
    assert [u.rsplit("/", 1)[1] for u in storage.list_files(small_run.tables_dir)] == [
        "requests.parquet", "runs.parquet", "timeseries.parquet"]
    stored = pq.read_table(io.BytesIO(storage.read_bytes(small_run.table_uri("requests"))))
    assert stored.num_rows == 12


def test_a_failure_while_the_tables_are_built_stores_nothing(
        small_run, meta, warehouse_uri, monkeypatch):
    """The records stream into the warehouse while the other tables are built: a build
    that fails rolls that back and leaves the bucket's tables as they were."""
    import threading

    from caio_operators.results import harvest
    from caio_operators.results.warehouse import DuckDBWarehouse

    harvest_run(small_run, meta, warehouse_uri)  # users 2
    before = {u: storage.read_bytes(u) for u in storage.list_files(small_run.tables_dir)}
    monkeypatch.setattr("caio_operators.results.records.REQUEST_BATCH_ROWS", 5)
    streaming = threading.Event()
    insert = DuckDBWarehouse._insert

    def watched_insert(con, run_id, name, frame):
        streaming.set()
        return insert(con, run_id, name, frame)

    def failing(*args, **kwargs):
        assert streaming.wait(30), "the records never reached the warehouse"
        raise ValueError("a bad histogram")

    monkeypatch.setattr(DuckDBWarehouse, "_insert", staticmethod(watched_insert))

    monkeypatch.setattr(harvest, "_with_other_inputs", failing)
    with pytest.raises(ValueError, match="a bad histogram"):
        harvest_run(small_run, {**meta, "users": 4}, warehouse_uri)
    assert {u: storage.read_bytes(u) for u in storage.list_files(small_run.tables_dir)} == before
    assert open_warehouse(warehouse_uri).query("SELECT users FROM runs")["users"].tolist() == [2]
    assert stored_counts(warehouse_uri, "run-1")["requests"] == 12
