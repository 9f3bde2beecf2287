"""The rules behind the fault outcomes, with literal inputs (the real faults are in the
other test files of this folder, run by `make test-faults`)."""

from __future__ import annotations

import json

import pandas as pd

from caio_operators import pipeline
from caio_operators.loadgen.local import worker_deaths_reason
from caio_operators.results.consolidate import build_tables
from caio_operators.targets.local import TEARDOWN_FILE, record_teardown_state, teardown_problem


def _state(**over):
    return {"supervisor_pid": 7, "supervisor_running": True, "replicas": 2,
            "dead_replicas": [], "log_path": "/s/server.log", **over}


def test_teardown_problem():
    assert teardown_problem(_state()) is None
    status, reason = teardown_problem(_state(dead_replicas=[1]))
    assert status == "degraded" and reason.startswith("replica-1 of 2 died mid-run")
    status, reason = teardown_problem(_state(supervisor_running=False, dead_replicas=[0, 1]))
    assert status == "failed" and "(pid 7) had died before the teardown" in reason


def test_record_teardown_state_and_the_run_status(tmp_path):
    class Proc:
        def __init__(self, pid):
            self.pid = pid

    deployment = {"target": "local", "pid": 7, "replica_pids": [8, 9],
                  "server_dir": str(tmp_path), "log_path": "/s/server.log"}
    state = record_teardown_state(deployment, [Proc(7), Proc(8)])
    assert state["supervisor_running"] and state["dead_replicas"] == [1]
    assert json.loads((tmp_path / TEARDOWN_FILE).read_text())["dead_replicas"] == [1]
    fate = pipeline.with_server_fate
    assert fate({"status": "success", "reason": ""}, deployment)["status"] == "degraded"
    failed = fate({"status": "failed", "reason": "load broke"}, deployment)
    assert failed["status"] == "failed" and failed["reason"].startswith("load broke; replica-1")
    record_teardown_state(deployment, [])
    assert fate({"status": "degraded", "reason": "x"}, deployment)["status"] == "failed"
    assert fate({"status": "success"}, {**deployment, "target": "endpoint"}) == {
        "status": "success"}


def test_worker_deaths_reason():
    reason = worker_deaths_reason([(1, 123, -9)])
    assert reason.startswith("locust worker 1 (pid 123, exit code -9) died mid-run")


def test_server_records_from_before_the_load_are_left_out():
    meta = {"run_id": "r", "status": "success", "started_at": 1000.0, "ended_at": 1010.0}
    columns = ["ts", "latency_ms", "ok", "status_code", "signature", "error"]
    client = pd.DataFrame([[1001.0, 5.0, True, 200, "s", None, "w"]], columns=[*columns, "worker"])
    server = pd.DataFrame([[990.0, 3.0, True, 200, "s", None, 0],  # recorded by an earlier try
                           [1001.0, 3.0, True, 200, "s", None, 0]], columns=[*columns, "replica"])
    empty = pd.DataFrame()
    requests = build_tables(meta, client, server, empty, empty)["requests"]
    assert list(requests["source"]) == ["client", "server"]
