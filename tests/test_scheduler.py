"""Under a real scheduler, runs that load this machine wait for each other in the host pool.

`airflow dags test` runs every task in its own process and ignores pools, so this starts
what a deployment runs: an API server (the execution API the tasks report to), a scheduler
with the LocalExecutor and a DAG processor, on a fresh Airflow home with the `caio_host`
pool as `make setup` creates it. Two runs of the tiny model on the local target are
triggered while the pool has no slot, so both exports are waiting before either can start;
then the pool gets its one slot. The task instances in the metadata database show every
task of the pool running alone (the second export waiting for the first, each load alone)
and the warehouse shows load windows that do not overlap, which neither run reports as
shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from itertools import combinations
from pathlib import Path

import pytest
from caio_testing import REPO, measured, our_processes

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
POOL = "caio_host"
POOLED = ("export", "load")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(home: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "CAIO_HOME": str(home / "caio"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # no scheduled run of the daily DAG: only the two triggered below
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def _cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, f"airflow {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc.stdout


def _rows(db: Path, sql: str, *params) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
        return con.execute(sql, params).fetchall()


def _wait(what: str, predicate, timeout_s: float, logs: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                      for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"gave up waiting for {what}\n{tails}")


def _ts(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


def test_local_runs_wait_for_each_other_in_the_host_pool(tmp_path):
    home, logs = tmp_path / "airflow", tmp_path / "logs"
    logs.mkdir()
    port = _port()
    env = _env(home, port)
    db = home / "airflow.db"
    _cli(env, "db", "migrate")
    _cli(env, "pools", "set", POOL, "0", "no slot yet: the runs queue")
    procs = []
    try:
        for name, argv in (("api-server", ["api-server", "--port", str(port), "--workers",
                                           "1"]),
                           ("scheduler", ["scheduler"]), ("dag-processor", ["dag-processor"])):
            with (logs / f"{name}.log").open("wb") as out:
                procs.append(subprocess.Popen([AIRFLOW, *argv], env=env, stdout=out,
                                              stderr=subprocess.STDOUT,
                                              start_new_session=True))
        _wait("the DAG to be parsed", lambda: _rows(
            db, "SELECT 1 FROM dag WHERE dag_id = 'caio_load_test'"), 240, logs)
        _cli(env, "dags", "unpause", "caio_load_test")
        warehouse = tmp_path / "wh.duckdb"
        conf = {"model_name": "tiny", "model_source": "builtin:tiny", "replicas": 1,
                "workers": 1, "load_shape": "constant", "users": 2, "duration_s": 5,
                "bucket": f"file://{tmp_path}/bucket", "warehouse": f"duckdb://{warehouse}"}
        for version in ("a", "b"):
            _cli(env, "dags", "trigger", "caio_load_test", "--run-id", f"pool-{version}",
                 "--conf", json.dumps({**conf, "model_version": version}))

        def exports_waiting():
            states = _rows(db, "SELECT state FROM task_instance WHERE task_id = 'export'")
            return len(states) == 2 and all(s == ("scheduled",) for s in states)

        # no slot: both exports wait, whatever else is free
        _wait("both exports to wait for the pool", exports_waiting, 300, logs)
        _cli(env, "pools", "set", POOL, "1", "one task that loads this machine at a time")
        _wait("both runs to end", lambda: _rows(
            db, "SELECT count(*) FROM dag_run WHERE dag_id = 'caio_load_test' AND state IN "
                "('success', 'failed') HAVING count(*) = 2"), 600, logs)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    runs = dict(_rows(db, "SELECT run_id, state FROM dag_run"))
    assert runs == {"pool-a": "success", "pool-b": "success"}, runs
    tis = {(run, task): (state, pool, _ts(scheduled), _ts(start), _ts(end))
           for run, task, state, pool, scheduled, start, end in _rows(
               db, "SELECT run_id, task_id, state, pool, scheduled_dttm, start_date, "
                   "end_date FROM task_instance")}
    assert {tis[(run, "load_gke")][0] for run in runs} == {"skipped"}
    pooled = {key: value for key, value in tis.items() if key[1] in POOLED}
    assert len(pooled) == 4 and {v[1] for v in pooled.values()} == {POOL}
    # one task of the pool at a time
    for (a, (_, _, _, a_start, a_end)), (b, (_, _, _, b_start, b_end)) in combinations(
            pooled.items(), 2):
        assert a_end <= b_start or b_end <= a_start, f"{a} and {b} overlapped"
    # the export that ran second was scheduled before the first one ended: it waited
    first, second = sorted((pooled[(run, "export")] for run in runs), key=lambda v: v[3])
    assert second[2] < first[4] <= second[3]

    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("SELECT run_id, status, reason, epoch(started_at), "
                           "epoch(ended_at), overlapping_runs FROM runs").fetchall()
    assert len(rows) == 2
    first_load, second_load = sorted(rows, key=lambda r: r[3])
    assert first_load[4] <= second_load[3]  # the load windows did not overlap
    for _, status, reason, _, _, overlapping in rows:
        assert overlapping == "" and measured(status, reason), reason
    assert not our_processes(), "processes left after the runs"
