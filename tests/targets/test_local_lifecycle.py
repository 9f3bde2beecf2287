"""Start-up failures, the lifetime watchdog, dying replicas and supervisors, for real."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from targets_helpers import SERVER_MODULE, python_env, server_processes, solid_image

from caio_operators.targets import protocols
from caio_operators.targets.base import DeployError
from caio_operators.targets.local import LocalTarget


def wait_until(predicate, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def start_cli(tmp_path: Path, model_dir: Path, *extra: str) -> subprocess.Popen:
    log = (tmp_path / "server.log").open("wb")
    argv = [sys.executable, "-m", SERVER_MODULE, "--model-dir", str(model_dir),
            "--port", "0", "--records-dir", str(tmp_path / "requests"),
            "--samples-dir", str(tmp_path / "samples"),
            "--ready-file", str(tmp_path / "ready.json"), *extra]
    return subprocess.Popen(argv, env=python_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def group_members(pgid: int) -> list[psutil.Process]:
    return server_processes(pgid)


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: root / "missing", "does not exist"),
    (lambda root: root, "no saved_model.pb"),
], ids=["missing dir", "not a SavedModel"])
def test_bad_model_dir_fails_deploy_clearly(tmp_path, make, message):
    before = {p.pid for p in psutil.process_iter() if SERVER_MODULE in " ".join(
        _cmdline(p))}
    with pytest.raises(DeployError, match=message):
        LocalTarget().deploy(model_uri=str(make(tmp_path)), model_name="m", model_version="1",
                             replicas=1, server_dir=str(tmp_path / "server"))
    after = {p.pid for p in psutil.process_iter() if SERVER_MODULE in " ".join(
        _cmdline(p))}
    assert after <= before


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def test_deploy_rejects_remote_uris_and_bad_replicas(tmp_path):
    with pytest.raises(DeployError, match="file://"):
        LocalTarget().deploy(model_uri="gs://bucket/models/m/1", model_name="m",
                             model_version="1", replicas=1, server_dir=str(tmp_path))
    with pytest.raises(DeployError, match="replicas"):
        LocalTarget().deploy(model_uri=str(tmp_path), model_name="m", model_version="1",
                             replicas=0, server_dir=str(tmp_path))


def test_unloadable_model_fails_deploy_with_log_tail(tmp_path):
    model = tmp_path / "broken"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"definitely not a protobuf")
    server_dir = tmp_path / "server"
    with pytest.raises(DeployError) as failure:
        LocalTarget().deploy(model_uri=str(model), model_name="m", model_version="1",
                             replicas=1, server_dir=str(server_dir), startup_timeout_s=120)
    text = str(failure.value)
    assert "exited with status 1 before it was ready" in text
    assert "cannot load the SavedModel" in text  # from the tail of the server log
    assert str(server_dir / "server.log") in text
    assert not [p for p in psutil.process_iter() if str(model) in " ".join(_cmdline(p))]


def test_startup_timeout_stops_everything(tiny_model_dir, tmp_path):
    server_dir = tmp_path / "server"
    with pytest.raises(DeployError, match="not ready within 1 s") as failure:
        LocalTarget().deploy(model_uri=str(tiny_model_dir), model_name="m",
                             model_version="1", replicas=1, server_dir=str(server_dir),
                             startup_timeout_s=1)
    assert "ends with" in str(failure.value)
    assert not [p for p in psutil.process_iter()
                if str(server_dir) in " ".join(_cmdline(p))]


def test_watchdog_ends_the_server_after_its_lifetime(tiny_model_dir, tmp_path):
    process = start_cli(tmp_path, tiny_model_dir, "--replicas", "2", "--max-lifetime-s", "1.5")
    assert process.wait(timeout=20) == 0
    assert wait_until(lambda: not group_members(process.pid), 5)
    assert "maximum lifetime" in (tmp_path / "server.log").read_text()
    assert not (tmp_path / "ready.json").exists()


def test_replicas_stop_when_the_supervisor_dies(tiny_model_dir, tmp_path):
    process = start_cli(tmp_path, tiny_model_dir, "--replicas", "2")
    assert wait_until(lambda: len(group_members(process.pid)) == 3, 10)
    replicas = [p for p in group_members(process.pid) if p.pid != process.pid]
    process.kill()
    process.wait()
    _, alive = psutil.wait_procs(replicas, timeout=10)
    assert not alive, "replicas outlived their supervisor"
    assert "supervisor (pid" in (tmp_path / "server.log").read_text()


def test_cli_rejects_bad_arguments(tmp_path):
    done = subprocess.run([sys.executable, "-m", SERVER_MODULE, "--model-dir", str(tmp_path),
                           "--replicas", "0"], env=python_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--replicas must be at least 1" in done.stderr
    done = subprocess.run([sys.executable, "-m", SERVER_MODULE, "--model-dir", str(tmp_path),
                           "--port", "0"], env=python_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "no saved_model.pb" in done.stderr


@pytest.mark.slow
def test_watchdog_ends_a_serving_server(tiny_model_dir, tmp_path):
    """Nothing outlives a lost teardown: past max_lifetime_s the server stops by itself."""
    deployment = LocalTarget().deploy(
        model_uri=str(tiny_model_dir), model_name="tiny", model_version="3", replicas=2,
        server_dir=str(tmp_path), max_lifetime_s=40, startup_timeout_s=240)
    try:
        body = protocols.predict_body([protocols.b64(solid_image((250, 5, 5)))],
                                      "serving_preprocess")
        assert requests.post(deployment["predict_url"], json=body, timeout=10).ok
        supervisor = psutil.Process(deployment["pid"])
        assert supervisor.wait(timeout=deployment["deadline"] - time.time() + 30) == 0
        assert wait_until(lambda: not server_processes(deployment["pid"]), 5)
        assert "maximum lifetime of 40 s reached" in Path(deployment["log_path"]).read_text()
        # The replicas flushed their records on the way out.
        assert list(Path(deployment["records_dir"]).glob("replica-*.csv"))
        with pytest.raises(requests.ConnectionError):
            requests.get(deployment["health_url"], timeout=5)
    finally:
        LocalTarget().undeploy(deployment)  # already gone: a no-op
    assert not server_processes(deployment["pid"])
