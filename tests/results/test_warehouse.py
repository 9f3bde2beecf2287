"""The DuckDB warehouse for real: schema, idempotent replace, read-back, guarded queries."""

from __future__ import annotations

import subprocess
import sys
import time

import pandas as pd
import pytest
from raw_run import a_verdict, named_reads_runs

from caio_operators.results import readers
from caio_operators.results import schema as sc
from caio_operators.results.consolidate import build_tables
from caio_operators.results.warehouse import (
    DuckDBWarehouse,
    WarehouseError,
    open_warehouse,
)


@pytest.fixture
def tables(small_run, meta):
    raw = readers.read_run_inputs(small_run)
    return build_tables(meta, raw.client, raw.server, raw.samples, raw.locust_history)


def relabel(tables, run_id):
    return {name: frame.assign(run_id=run_id) for name, frame in tables.items()}


def counts(wh, run_id=None):
    out = {}
    for table in sc.TABLES:
        where = " WHERE run_id = $run" if run_id else ""
        sql = f"SELECT count(*) AS n FROM {table}{where}"
        out[table] = int(wh.query(sql, {"run": run_id} if run_id else None)["n"].iloc[0])
    return out


def test_open_by_scheme(tmp_path):
    wh = open_warehouse(f"duckdb://{tmp_path}/w.duckdb")
    assert isinstance(wh, DuckDBWarehouse) and wh.path == tmp_path / "w.duckdb"
    from caio_operators.results.warehouse.bigquery import BigQueryWarehouse

    assert isinstance(open_warehouse("bigquery://my-project/bench"), BigQueryWarehouse)
    with pytest.raises(WarehouseError, match="absolute"):
        open_warehouse("duckdb://relative/w.duckdb")
    with pytest.raises(WarehouseError, match="unknown warehouse URI"):
        open_warehouse("sqlite:///tmp/w.db")


def test_ensure_schema_is_idempotent(warehouse_uri):
    wh = open_warehouse(warehouse_uri)
    wh.ensure_schema()
    wh.ensure_schema()
    assert counts(wh) == {"runs": 0, "timeseries": 0, "requests": 0}
    cols = wh.query("SELECT * FROM timeseries")
    assert list(cols.columns) == sc.columns("timeseries")


def test_replace_run_twice_never_duplicates(warehouse_uri, tables):
    wh = open_warehouse(warehouse_uri)
    first = wh.replace_run(tables, "run-1")
    second = wh.replace_run(tables, "run-1")
    assert first == second == {"runs": 1, "timeseries": len(tables["timeseries"]),
                               "requests": 12}
    assert counts(wh) == first


def test_two_runs_side_by_side(warehouse_uri, tables):
    wh = open_warehouse(warehouse_uri)
    wh.replace_run(tables, "run-1")
    wh.replace_run(relabel(tables, "run-2"), "run-2")
    assert counts(wh, "run-1") == counts(wh, "run-2")
    assert counts(wh)["requests"] == 24
    # replacing run-2 with fewer rows leaves run-1 alone and drops run-2's absent table
    wh.replace_run({"runs": relabel(tables, "run-2")["runs"]}, "run-2")
    assert counts(wh, "run-2") == {"runs": 1, "timeseries": 0, "requests": 0}
    assert counts(wh, "run-1")["requests"] == 12
    ids = wh.query("SELECT run_id FROM runs ORDER BY run_id")["run_id"].tolist()
    assert ids == ["run-1", "run-2"]


def test_read_run_round_trips_values_and_dtypes(warehouse_uri, tables):
    wh = open_warehouse(warehouse_uri)
    wh.replace_run(tables, "run-1")
    back = wh.read_run("run-1")
    for name in sc.TABLES:
        sc.validate(name, back[name])
    pd.testing.assert_frame_equal(back["runs"], tables["runs"])
    key = ["metric", "dimension", "ts"]
    pd.testing.assert_frame_equal(
        back["timeseries"].sort_values(key, ignore_index=True),
        tables["timeseries"].sort_values(key, ignore_index=True))
    req_key = ["source", "ts"]
    pd.testing.assert_frame_equal(
        back["requests"].sort_values(req_key, ignore_index=True),
        tables["requests"].sort_values(req_key, ignore_index=True))
    assert all(frame.empty for frame in wh.read_run("unknown").values())


def test_replace_run_rejects_rows_of_another_run(warehouse_uri, tables):
    wh = open_warehouse(warehouse_uri)
    with pytest.raises(WarehouseError, match="not only 'run-9'"):
        wh.replace_run(tables, "run-9")
    with pytest.raises(WarehouseError, match="unknown table"):
        wh.replace_run({"users": tables["runs"]}, "run-1")


def test_a_failed_replace_leaves_no_new_warehouse_and_an_old_one_as_it_was(tmp_path, tables):
    path = tmp_path / "wh" / "w.duckdb"
    with pytest.raises(RuntimeError, match="bucket full"), \
            DuckDBWarehouse(path).replacing("run-1") as load:
        load("runs", tables["runs"])
        raise RuntimeError("bucket full")
    assert list(path.parent.iterdir()) == []  # no database, no WAL: nothing reached it
    DuckDBWarehouse(path).replace_run(tables, "run-1")
    with pytest.raises(RuntimeError, match="bucket full"), \
            DuckDBWarehouse(path).replacing("run-1") as load:
        load("runs", relabel(tables, "run-1")["runs"].assign(users=99))
        raise RuntimeError("bucket full")
    assert DuckDBWarehouse(path).query("SELECT users FROM runs")["users"].tolist() == [2]


def test_query_uses_parameters(warehouse_uri, tables):
    wh = open_warehouse(warehouse_uri)
    wh.replace_run(tables, "run-1")
    hostile = "run-1' OR '1'='1"
    assert wh.query("SELECT * FROM runs WHERE run_id = $r", {"r": hostile}).empty
    got = wh.query("SELECT p50_ms FROM runs WHERE run_id = ?", ["run-1"])
    assert got["p50_ms"].tolist() == [30.0]
    got = wh.query("WITH x AS (SELECT * FROM requests WHERE source = $s) "
                   "SELECT count(*) AS n FROM x", {"s": "server"})
    assert got["n"].tolist() == [4]


def test_named_reads_answer_the_analysis_questions(warehouse_uri, tables):
    wh = open_warehouse(warehouse_uri)
    wh.ensure_schema()
    assert wh.latest_run_id() is None
    for frames, run_id in named_reads_runs(tables):
        wh.replace_run(frames, run_id)
    wh.replace_tables({"verdicts": a_verdict("run-3", "regression", 0.5)}, "run-3")

    row = wh.run_row("run-2")
    assert list(row.columns) == sc.columns("runs")
    assert row[["run_id", "model_version"]].values.tolist() == [["run-2", "v2"]]
    assert wh.run_row("run-1' OR '1'='1").empty and wh.run_row("nope").empty
    # never started, harvested in 2024: after every start in 1970
    assert wh.latest_run_id() == "run-5"
    # run-3 failed, run-4 is another model, run-5 never started, run-1 is the run itself
    found = wh.baseline_candidates("mobilenet", "run-1")
    assert list(found.columns) == ["run_id", "model_version", "model_source", "started_at",
                                   "params", "provenance", "benchmark"]
    assert found["run_id"].tolist() == ["run-2"]
    assert sorted(wh.baseline_candidates("mobilenet", "run-2")["run_id"]) == ["run-1"]

    got = wh.client_latencies("run-2")
    assert list(got.columns) == ["ts", "latency_ms", "ok"]
    client = tables["requests"][tables["requests"]["source"] == "client"]
    assert sorted(got["latency_ms"]) == sorted(client["latency_ms"]) and len(got) == 8

    history = wh.history("caio_load_test")
    assert history["run_id"].tolist() == ["run-1", "run-3", "run-4"]
    assert history["verdict"].fillna("-").tolist() == ["-", "regression", "-"]
    assert history["cost_per_1k"].iloc[1] == 0.5
    assert wh.history("*")["run_id"].tolist() == ["run-1", "run-2", "run-3", "run-4"]
    assert wh.history("other_dag").empty


@pytest.mark.parametrize("sql, message", [
    ("DROP TABLE runs", "one SELECT"),
    ("DELETE FROM runs", "one SELECT"),
    ("SELECT 1; SELECT 2", "one SELECT"),
    ("SELECT * FROM read_csv('/etc/passwd')", "table functions"),
    ("SELECT * FROM '/etc/passwd'", "allowed tables"),
    ("SELECT * FROM information_schema.tables", "allowed tables"),
    ("SELECT * FROM runs JOIN secrets USING (run_id)", "allowed tables"),
])
def test_query_refuses_anything_but_selects_on_the_tables(warehouse_uri, sql, message):
    wh = open_warehouse(warehouse_uri)
    wh.ensure_schema()
    with pytest.raises(WarehouseError, match=message):
        wh.query(sql)
    assert counts(wh) == {"runs": 0, "timeseries": 0, "requests": 0}


def test_reading_a_missing_warehouse_says_so(tmp_path):
    wh = open_warehouse(f"duckdb://{tmp_path}/nothing-here.duckdb")
    with pytest.raises(WarehouseError, match="does not exist yet"):
        wh.read_run("run-1")


HOLD_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def hold_lock(path, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_waits_for_another_process_holding_the_lock(tmp_path, tables):
    path = tmp_path / "shared.duckdb"
    DuckDBWarehouse(path).ensure_schema()
    holder = hold_lock(path, 1.0)
    try:
        started = time.monotonic()
        assert DuckDBWarehouse(path, lock_timeout_s=30).replace_run(tables, "run-1")["runs"] == 1
        assert time.monotonic() - started > 0.3  # it really waited
    finally:
        holder.wait(timeout=30)


def test_gives_up_on_a_lock_after_the_timeout(tmp_path):
    path = tmp_path / "shared.duckdb"
    DuckDBWarehouse(path).ensure_schema()
    holder = hold_lock(path, 3.0)
    try:
        with pytest.raises(WarehouseError, match="held its lock"):
            DuckDBWarehouse(path, lock_timeout_s=0.3).read_run("run-1")
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_failed_replace_changes_nothing(warehouse_uri, tables):
    import duckdb

    wh = open_warehouse(warehouse_uri)
    wh.replace_run(tables, "run-1")
    con = duckdb.connect(str(wh.path))  # the last table refuses the rows: a column we never fill
    con.execute("CREATE TABLE r2 AS SELECT *, 0 AS extra FROM requests")
    con.execute("DROP TABLE requests")
    con.execute("ALTER TABLE r2 RENAME TO requests")
    con.execute("ALTER TABLE requests ALTER extra SET NOT NULL")
    con.close()
    before = counts(wh, "run-1")
    with pytest.raises(WarehouseError, match=r"nothing changed.*extra"):
        wh.replace_run(tables, "run-1")
    assert counts(wh, "run-1") == before  # the deletes were rolled back


def test_an_older_warehouse_gains_the_new_columns(warehouse_uri, tables):
    import duckdb

    wh = open_warehouse(warehouse_uri)
    wh.replace_run(tables, "run-1")
    con = duckdb.connect(str(wh.path))  # from before the load generator's CPU was kept
    con.execute("ALTER TABLE runs DROP COLUMN generator_saturated")
    con.execute("ALTER TABLE runs DROP COLUMN max_worker_cpu_pct")
    con.close()
    wh.replace_run(relabel(tables, "run-2"), "run-2")
    got = wh.query("SELECT run_id, max_worker_cpu_pct, generator_saturated FROM runs "
                   "ORDER BY run_id")
    assert got["run_id"].tolist() == ["run-1", "run-2"]
    assert got["generator_saturated"].isna().all()  # small_run has no worker CPU samples
    assert list(wh.read_run("run-1")["runs"].columns) == sc.columns("runs")
