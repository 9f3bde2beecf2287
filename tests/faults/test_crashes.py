"""Faults 1-3: a replica, the whole model server or a Locust worker killed mid-run.

Each runs the DAG's stages on the local target with real processes (deploy, load, undeploy,
harvest, analyse), kills one of them with SIGKILL while the load runs, and checks what the
run reports, what it stored, and that nothing is left running.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from caio_testing import our_processes
from faults_helpers import (
    LOG,
    LoadInBackground,
    client_records,
    flushed_files,
    make_spec,
    place_model,
    query,
    wait_until,
)

from caio_operators import pipeline, storage
from caio_operators.targets.local import _server_processes

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _deploy(spec, tiny_export):
    place_model(spec, tiny_export)
    return pipeline.deploy(spec, log=LOG)


def _server_left(deployment) -> list:
    return _server_processes(deployment["pid"], deployment["pid_create_time"],
                             deployment["ready_file"])


def _finish(spec, deployment):
    """Teardown, harvest and analyse, as the DAG runs them after the load."""
    pipeline.undeploy(deployment, log=LOG, spec=spec)
    assert not _server_left(deployment)
    harvested = pipeline.harvest(spec, log=LOG, deployment=deployment)
    try:
        analysed = pipeline.analyse(spec, log=LOG)
    except pipeline.RunFailed as exc:
        analysed = {"failed": str(exc)}
    return harvested, analysed


def _first_flush(spec) -> None:
    assert wait_until(lambda: flushed_files(spec), 40), "no client records were flushed"


def test_a_replica_killed_mid_run(tmp_path, tiny_export):
    spec = make_spec(tmp_path, replicas=2, users=4, duration_s=16)
    deployment = _deploy(spec, tiny_export)
    try:
        with LoadInBackground(spec, deployment) as load:
            _first_flush(spec)
            killed_at = time.time()
            os.kill(deployment["replica_pids"][1], signal.SIGKILL)
            load.join()
        assert load.error is None, load.error
        assert load.result["status"] == "success"  # the load itself went on to its end
        harvested, analysed = _finish(spec, deployment)
    finally:
        pipeline.undeploy(deployment, log=LOG)

    (status, reason, requests, failures), = query(
        spec, "SELECT status, reason, requests, failures FROM runs")
    assert status == "degraded" and "replica-1 of 2 died mid-run" in reason
    assert harvested["status"] == "degraded" and analysed.get("status") == "degraded"
    # the surviving replica kept serving: successful client requests long after the kill
    (after,), = query(spec, "SELECT count(*) FROM requests WHERE source = 'client' AND ok "
                            "AND epoch(ts) > ?", killed_at + 3)
    (late_server,), = query(spec, "SELECT count(*) FROM requests WHERE source = 'server' AND "
                                  "origin = 'replica-0' AND epoch(ts) > ?", killed_at + 3)
    assert after > 50 and late_server > 50
    # every failure is in a window around the kill, and the timeseries shows it there
    window = query(spec, "SELECT min(epoch(ts)), max(epoch(ts)), count(*) FROM requests "
                         "WHERE source = 'client' AND NOT ok")
    (first, last, n_failed), = window
    assert n_failed == failures
    if failures:
        assert killed_at - 2 <= first and last <= killed_at + 10, (first, last, killed_at)
        (peak,), = query(spec, "SELECT max(value) FROM timeseries WHERE "
                               "metric = 'failure_rate_rps' AND dimension = 'all'")
        assert peak > 0
    # every client record the workers flushed is stored: none lost
    assert requests == len(client_records(spec))
    report = storage.read_text(spec.layout.report_html)
    assert "replica-1 of 2 died mid-run" in report
    assert not our_processes()


def test_the_whole_server_killed_mid_run(tmp_path, tiny_export):
    spec = make_spec(tmp_path, replicas=2, users=2, duration_s=12)
    deployment = _deploy(spec, tiny_export)
    try:
        with LoadInBackground(spec, deployment) as load:
            _first_flush(spec)
            killed_at = time.time()
            os.killpg(deployment["pid"], signal.SIGKILL)  # supervisor and replicas at once
            load.join()
        harvested, analysed = _finish(spec, deployment)
    finally:
        pipeline.undeploy(deployment, log=LOG)

    (status, reason, requests, failures), = query(
        spec, "SELECT status, reason, requests, failures FROM runs")
    assert status == "failed" and harvested["status"] == "failed"
    assert f"local model server (pid {deployment['pid']}) had died before the teardown" in reason
    assert "failed" in analysed and "died before the teardown" in analysed["failed"]
    # what was collected before and after the crash is stored: successes before, failures after
    assert requests == len(client_records(spec)) and 0 < failures < requests
    (ok_before,), = query(spec, "SELECT count(*) FROM requests WHERE source = 'client' AND ok "
                                "AND epoch(ts) < ?", killed_at)
    (ok_after,), = query(spec, "SELECT count(*) FROM requests WHERE source = 'client' AND ok "
                               "AND epoch(ts) > ?", killed_at + 1)
    (server_rows,), = query(spec, "SELECT count(*) FROM requests WHERE source = 'server'")
    assert ok_before > 0 and ok_after == 0 and server_rows > 0
    assert storage.exists(spec.layout.report_html)
    assert not our_processes()


def test_a_locust_worker_killed_mid_run(tmp_path, tiny_export):
    spec = make_spec(tmp_path, replicas=1, workers=2, users=4, duration_s=16)
    deployment = _deploy(spec, tiny_export)
    try:
        with LoadInBackground(spec, deployment) as load:
            assert wait_until(lambda: load.launcher and len(load.launcher.workers) == 2, 60)
            victim = load.launcher.workers[1]
            mine = f"-{victim.pid}-"

            def victim_files():
                return [p for p in flushed_files(spec) if mine in p.name]

            assert wait_until(victim_files, 40), "the worker never flushed its records"
            time.sleep(1.0)
            flushed = {p.name: p.read_bytes() for p in victim_files()}
            victim.send_signal(signal.SIGKILL)
            load.join()
        assert load.error is None, load.error
        result = load.result
        harvested, analysed = _finish(spec, deployment)
    finally:
        pipeline.undeploy(deployment, log=LOG)

    # the master carried on with the other worker and ended cleanly
    assert result["master_exit_code"] == 0 and result["worker_exit_codes"][1] == -9
    assert result["status"] == "degraded" and "locust worker 1" in result["reason"]
    (status, reason, requests), = query(spec, "SELECT status, reason, requests FROM runs")
    assert status == "degraded" and "died mid-run" in reason
    assert harvested["status"] == "degraded" and analysed["status"] == "degraded"
    # every record the dead worker flushed is stored, unchanged
    flushed_rows = sum(data.count(b"\n") - 1 for data in flushed.values())
    (stored,), = query(spec, "SELECT count(*) FROM requests WHERE source = 'client' AND "
                             "origin LIKE ?", f"%-{victim.pid}")
    assert flushed_rows > 0 and stored >= flushed_rows
    assert requests == len(client_records(spec))
    # the surviving worker kept loading until the end of the shape
    (last_ok,), = query(spec, "SELECT max(epoch(ts)) FROM requests WHERE source = 'client' "
                              "AND ok AND origin NOT LIKE ?", f"%-{victim.pid}")
    assert last_ok > result["ended_at"] - 8
    assert not our_processes()
