"""Fault 5: harvest + write run twice and concurrently for the same run.

Three processes harvest the same run twice each, at the same time, into one bucket and one
DuckDB warehouse, while the test reads every Parquet file it can see: each one it sees is
whole, and the warehouse ends with exactly one set of rows.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pyarrow.parquet as pq
import pytest
from faults_helpers import env_with_plugins

from caio_operators import storage
from caio_operators.layout import RunLayout

pytestmark = pytest.mark.faults

RUN = "race-run"
N_CLIENT = 20000
HARVEST = """
import json, sys
from caio_operators.layout import RunLayout
from caio_operators.results.harvest import harvest_run
meta = json.loads(sys.argv[3])
for _ in range(2):
    out = harvest_run(RunLayout(sys.argv[1], meta["run_id"]), meta, sys.argv[2])
    print(json.dumps(out["counts"]), flush=True)
"""


def _write_run(bucket: str, run_id: str = RUN) -> RunLayout:
    """A run of N_CLIENT client records over two workers, and as many server records."""
    layout = RunLayout(bucket, run_id)
    for worker in (1, 2):
        rows = [f"{1000 + i * 0.001 + worker * 0.0001:.4f},{5 + i % 7},1,200,serving_default,"
                f"{worker},50," for i in range(N_CLIENT // 2)]
        storage.write_text(storage.join(layout.client_requests_dir, f"worker-{worker}-0.csv"),
                           "ts,latency_ms,ok,status_code,signature,worker,bytes,error\n"
                           + "\n".join(rows) + "\n")
    rows = [f"{1000 + i * 0.001 + 0.0005:.4f},3,1,200,serving_default,0,1,"
            for i in range(N_CLIENT)]
    storage.write_text(storage.join(layout.server_requests_dir, "replica-0-0.csv"),
                       "ts,latency_ms,ok,status_code,signature,replica,instances,error\n"
                       + "\n".join(rows) + "\n")
    return layout


def test_concurrent_harvests_leave_one_set_of_rows_and_no_partial_parquet(tmp_path):
    import json

    import duckdb

    bucket = "file://" + str(tmp_path / "bucket")
    warehouse = tmp_path / "wh.duckdb"
    layout = _write_run(bucket)
    meta = {"run_id": RUN, "dag_id": "faults", "target": "local", "protocol": "caip",
            "model_name": "m", "model_version": "v", "model_source": "builtin:tiny",
            "weights": "w", "signature": "serving_default", "load_shape": "constant",
            "users": 2, "workers": 2, "replicas": 1, "status": "success", "reason": "",
            "started_at": 999.0, "ended_at": 1011.0, "provenance": {}, "params": {}}
    tables_dir = storage.local_path(layout.tables_dir)
    seen, bad, done = {}, [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            for path in (tables_dir.glob("*.parquet") if tables_dir.exists() else []):
                try:
                    rows = pq.read_table(path).num_rows
                except FileNotFoundError:
                    continue  # replaced between the listing and the read
                except Exception as exc:  # a partial file would land here
                    bad.append(f"{path.name}: {exc}")
                    continue
                seen.setdefault(path.name, set()).add(rows)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    procs = [subprocess.Popen([sys.executable, "-c", HARVEST, bucket, f"duckdb://{warehouse}",
                               json.dumps(meta)], env=env_with_plugins(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    done.set()
    watcher.join(10)
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    counts = {line for out, _ in outs for line in out.splitlines()}
    assert len(counts) == 1  # every harvest built the same rows
    expected = json.loads(counts.pop())

    assert not bad, bad
    assert set(seen) == {"runs.parquet", "timeseries.parquet", "requests.parquet"}
    assert seen["requests.parquet"] == {2 * N_CLIENT} and seen["runs.parquet"] == {1}
    leftovers = [p.name for p in tables_dir.iterdir() if p.suffix != ".parquet"]
    assert not leftovers, leftovers  # no temporary files left behind
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for table in ("runs", "timeseries", "requests"):
            (n,), = con.execute(f"SELECT count(*) FROM {table}").fetchall()
            assert n == expected[table], table
        (dupes,), = con.execute("SELECT count(*) - count(DISTINCT (source, origin, ts)) "
                                "FROM requests").fetchall()
        assert dupes == 0
