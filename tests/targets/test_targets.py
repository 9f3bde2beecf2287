"""Target registry, the endpoint target, record files and supervisor helpers."""

from __future__ import annotations

import csv
import threading

import pytest

from caio_operators.targets import base
from caio_operators.targets.base import DeployError, Target, UndeployError, get_target
from caio_operators.targets.endpoint import EndpointTarget
from caio_operators.targets.local import LocalTarget
from caio_operators.targets.local_server import (
    DEFAULT_MAX_BODY_BYTES,
    build_parser,
    threads_per_replica,
)
from caio_operators.targets.records import SERVER_RECORD_COLUMNS, CsvBatchWriter


def test_registry_builds_known_targets_and_names_them_on_error():
    assert isinstance(get_target("local"), LocalTarget)
    assert isinstance(get_target("endpoint"), EndpointTarget)
    assert isinstance(get_target("local"), Target)
    with pytest.raises(ValueError, match="unknown deploy target 'gke'; known targets: "
                                         "caip, endpoint, local, vertex"):
        get_target("gke")


def test_register_target():
    base.register_target("fake", "caio_operators.targets.endpoint:EndpointTarget")
    try:
        assert isinstance(get_target("fake"), EndpointTarget)
    finally:
        base._TARGETS.pop("fake")


def test_endpoint_target_returns_the_url_as_given():
    url = "https://10.0.0.5:8443/v1/models/resnet:predict"
    deployment = EndpointTarget().deploy(url=url, protocol="tfserving")
    assert deployment == {
        "target": "endpoint", "protocol": "tfserving", "predict_url": url,
        "base_url": "https://10.0.0.5:8443", "health_url": "https://10.0.0.5:8443/v1/models/resnet",
        "project": "local", "model_name": "", "model_version": ""}
    EndpointTarget().undeploy(deployment)  # nothing to do
    base.undeploy(deployment)


def test_endpoint_target_completes_a_bare_host():
    deployment = EndpointTarget().deploy(url="http://h:8080", protocol="caip", model_name="m",
                                         model_version="2", project="p")
    assert deployment["predict_url"] == "http://h:8080/v1/projects/p/models/m/versions/2:predict"
    assert deployment["health_url"] == ""


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"url": "ftp://h/x:predict", "protocol": "tfserving"}, "http:// or https://"),
    ({"url": "h:8501/v1/models/m:predict", "protocol": "tfserving"}, "http:// or https://"),
    ({"url": "http://h/v1/models/m:predict", "protocol": "rest"}, "known protocols"),
    ({"url": "http://h", "protocol": "vertex"}, "endpoint is required"),
])
def test_endpoint_target_rejects_bad_input(kwargs, message):
    with pytest.raises(DeployError, match=message):
        EndpointTarget().deploy(**kwargs)


def test_local_undeploy_without_a_server_is_a_no_op():
    LocalTarget().undeploy({"target": "local"})
    # A pid that is not our server (this test process) is never signalled.
    import os

    LocalTarget().undeploy({"target": "local", "pid": os.getpid(), "pid_create_time": 1.0,
                            "ready_file": "/nowhere/ready.json"})
    with pytest.raises(UndeployError, match="not on this host"):
        LocalTarget().undeploy({"target": "local", "pid": 12345, "hostname": "elsewhere"})


def test_csv_batch_writer_writes_whole_numbered_files(tmp_path):
    writer = CsvBatchWriter(tmp_path, "replica-0", SERVER_RECORD_COLUMNS)
    assert writer.flush() is None  # nothing collected: no empty file

    def add(start: int) -> None:
        for i in range(start, start + 100):
            writer.add((f"{i}.0", "1.5", 1, 200, "serving_default", 0, 1, ""))

    threads = [threading.Thread(target=add, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = writer.flush()
    writer.add(("9.0", "2.0", 0, 400, "", 0, 0, 'bad, "quoted"\nerror'))
    writer.close()
    files = sorted(tmp_path.glob("*.csv"))
    assert [f.name for f in files] == ["replica-0-000000.csv", "replica-0-000001.csv"]
    assert first == files[0]
    rows = []
    for f in files:
        with f.open(newline="") as handle:
            reader = csv.DictReader(handle)
            assert tuple(reader.fieldnames) == SERVER_RECORD_COLUMNS
            rows.extend(reader)
    assert len(rows) == 401
    assert rows[-1]["error"] == 'bad, "quoted"\nerror'
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_threads_and_defaults():
    assert threads_per_replica(1, 3) == 3
    assert threads_per_replica(1000) == 1
    args = build_parser().parse_args(["--model-dir", "x"])
    assert args.host == "127.0.0.1" and args.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 10 * 2**20


def test_local_undeploy_never_kills_a_process_that_reused_the_pid(tmp_path):
    """A stranger leading its own process group under the recorded pid is left alone."""
    import subprocess
    import sys

    import psutil

    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                start_new_session=True)
    try:
        created = psutil.Process(stranger.pid).create_time()
        for create_time in (created, created - 100):  # right time, wrong command; and neither
            LocalTarget().undeploy({"target": "local", "pid": stranger.pid,
                                    "pid_create_time": create_time,
                                    "ready_file": str(tmp_path / "ready.json")})
            assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
