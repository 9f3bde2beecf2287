"""Fault 4: the `load` task timed out (execution_timeout) or killed (SIGTERM -> on_kill).

The task runs in its own process as Airflow's task runner runs it (`load_task.py`); each
time every Locust process must end with it, and the retry must start clean: the stored rows
are exactly those of the try that finished, never those of the killed tries as well.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from caio_testing import measured, our_processes
from faults_helpers import (
    LOG,
    client_records,
    env_with_plugins,
    flushed_files,
    make_spec,
    place_model,
    query,
    wait_until,
)

from caio_operators import pipeline, storage

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TASK = Path(__file__).with_name("load_task.py")


def _locust() -> list:
    return [p for p in our_processes() if "locustfile.py" in " ".join(p.cmdline())]


def _start(tmp_path: Path, spec_dict: dict, deployment: dict, try_number: int,
           timeout_s: float | None = None) -> subprocess.Popen:
    spec_file, dep_file = tmp_path / f"spec-{try_number}.json", tmp_path / "deployment.json"
    spec_file.write_text(json.dumps(spec_dict))
    dep_file.write_text(json.dumps(deployment))
    argv = [sys.executable, str(TASK), str(spec_file), str(dep_file), str(try_number)]
    if timeout_s is not None:
        argv.append(str(timeout_s))
    return subprocess.Popen(argv, env=env_with_plugins(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_timed_out_and_killed_load_tasks_end_everything_and_the_retry_starts_clean(
        tmp_path, tiny_export):
    spec = make_spec(tmp_path, replicas=1, users=2, duration_s=6)
    place_model(spec, tiny_export)
    long_try = {**spec.to_dict(), "duration_s": 60}  # would outlive its timeout / kill
    deployment = pipeline.deploy(spec, log=LOG)
    try:
        # try 1: execution_timeout after 9 s
        task = _start(tmp_path, long_try, deployment, 1, timeout_s=9)
        out, _ = task.communicate(timeout=120)
        assert task.returncode == 3 and "timed out" in out, out[-3000:]
        assert not _locust(), "Locust processes outlived the timed-out task"
        first_try = len(client_records(spec))
        assert first_try > 0  # it did send load before it was cut
        result = json.loads(storage.read_text(spec.layout.load_result_uri))
        assert result["status"] == "failed"

        # try 2: SIGTERM (what Airflow sends a task it kills) once the load is under way
        second_started = time.time()
        task = _start(tmp_path, long_try, deployment, 2)
        assert task.stdout.readline().strip() == "ready"  # its SIGTERM handler is set

        def second_try_flushed():
            return [f for f in flushed_files(spec) if f.stat().st_mtime > second_started]

        assert wait_until(second_try_flushed, 60)
        task.send_signal(signal.SIGTERM)
        out, _ = task.communicate(timeout=120)
        assert task.returncode == 1 and "stopped by request" in out, out[-3000:]
        assert not _locust(), "Locust processes outlived the killed task"

        # try 3: runs to its end
        retry_started = time.time()
        task = _start(tmp_path, spec.to_dict(), deployment, 3)
        out, _ = task.communicate(timeout=180)
        assert task.returncode == 0, out[-3000:]
    finally:
        pipeline.undeploy(deployment, log=LOG, spec=spec)
    records = client_records(spec)
    assert records and min(float(r["ts"]) for r in records) > retry_started
    pipeline.harvest(spec, log=LOG, deployment=deployment)
    pipeline.harvest(spec, log=LOG, deployment=deployment)  # a harvest retry, too

    (runs, status, reason, requests), = query(spec, "SELECT count(*), any_value(status), "
                                                    "any_value(reason), any_value(requests) "
                                                    "FROM runs")
    assert runs == 1 and measured(status, reason) and requests == len(records), reason
    (client, distinct, first_ts), = query(
        spec, "SELECT count(*), count(DISTINCT (origin, ts, latency_ms)), min(epoch(ts)) "
              "FROM requests WHERE source = 'client'")
    assert client == distinct == len(records) and first_ts > retry_started
    # the server (deployed once) recorded the killed tries too; only this try's are stored
    (server, server_first), = query(spec, "SELECT count(*), min(epoch(ts)) FROM requests "
                                          "WHERE source = 'server'")
    assert server_first > retry_started and abs(server - client) <= 2
    assert not our_processes()
