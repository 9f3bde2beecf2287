"""The local server's GPUs: NVML samples per replica and device, pinning, NVML absent.

NVML is faked at the library boundary (``fake_nvml.FakeNvml``: the pynvml functions the
code calls), handed in through ``LocalGpus.open(..., nvml=)`` / ``GpuSampler(nvml, ...)``.
This machine has no GPU and no NVML library: the tests of that case use the real pynvml.
"""

from __future__ import annotations

import csv
import logging
import pathlib
import subprocess
import sys
import time

import pytest
from fake_nvml import FakeDevice, FakeNvml

from caio_operators.metrics import gpu
from caio_operators.metrics.gpu import GpuSampler, LocalGpus
from caio_operators.spec import SpecError, param_schema, validate_params

GIB = 2**30


def two_gpus() -> FakeNvml:
    return FakeNvml(devices=[
        FakeDevice(gpu_pct=37.5, used_bytes=GIB, power_mw=250_000),
        FakeDevice(gpu_pct=90.0, used_bytes=3 * GIB, power_mw=None),
    ])


def test_pinned_replicas_round_robin_and_each_device_is_read_once():
    nvml = two_gpus()
    gpus = LocalGpus.open("0,1", replicas=3, nvml=nvml)
    assert gpus.assignment == {0: 0, 1: 1, 2: 0}
    pairs = gpu.sampled_pairs(gpus.assignment, gpus.devices, gpus.device_count)
    rows = GpuSampler(nvml, pairs).sample(1000.0)
    assert rows == [
        ("1000.000000", "0", 0, "37.5", "1024.0", "81920.0", "250.0"),
        ("1000.000000", "1", 1, "90.0", "3072.0", "81920.0", ""),
        ("1000.000000", "2", 0, "37.5", "1024.0", "81920.0", "250.0"),
    ]
    assert nvml.calls.count("utilization") == 2  # device 0 serves two replicas: read once


def test_missing_power_is_left_empty_and_said_once(caplog):
    nvml = two_gpus()
    sampler = GpuSampler(nvml, [("0", 1)])
    with caplog.at_level(logging.INFO, logger="caio_operators.metrics.gpu"):
        first, second = sampler.sample(1.0), sampler.sample(2.0)
    assert first[0][-1] == second[0][-1] == ""
    assert first[0][3] == "90.0"
    said = [r.getMessage() for r in caplog.records if "no power" in r.getMessage()]
    assert said == ["GPU 1: no power from NVML (Not Supported); left empty"]


def test_unpinned_replicas_sample_every_device_once_without_a_replica():
    nvml = two_gpus()
    gpus = LocalGpus.open("", replicas=4, nvml=nvml)
    assert gpus.devices is None
    pairs = gpu.sampled_pairs(gpus.assignment, gpus.devices, gpus.device_count)
    assert pairs == [("", 0), ("", 1)]
    assert [row[1:3] for row in GpuSampler(nvml, pairs).sample(5.0)] == [("", 0), ("", 1)]


@pytest.mark.parametrize(("text", "replicas", "expected"), [
    ("0,1", 3, [{"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
                {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
                {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}]),
    ("1", 2, [{"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}] * 2),
    ("all", 2, [{"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
                {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}]),
    ("none", 2, [{"CUDA_VISIBLE_DEVICES": ""}] * 2),
    ("", 2, [{}] * 2),
])
def test_each_replica_gets_its_own_cuda_visible_devices(text, replicas, expected):
    gpus = LocalGpus.open(text, replicas=replicas, nvml=two_gpus())
    base = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "7"}  # an inherited value is replaced
    for index, wanted in enumerate(expected):
        env = gpus.env(index, base)
        pinned = {k: env[k] for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER") if k in env}
        assert pinned == (wanted or {"CUDA_VISIBLE_DEVICES": "7"})
        assert env["PATH"] == "/bin"
        assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"  # replicas can share a device
    assert gpus.env(0, {"TF_FORCE_GPU_ALLOW_GROWTH": "false"})["TF_FORCE_GPU_ALLOW_GROWTH"] \
        == "false"


def test_a_replica_started_later_follows_the_same_rule():
    """A replica index beyond the first ones (a restart or a scale-out) is pinned too."""
    gpus = LocalGpus.open("0,1", replicas=2, nvml=two_gpus())
    assert [gpus.env(i, {})["CUDA_VISIBLE_DEVICES"] for i in (2, 3, 4)] == ["0", "1", "0"]
    hidden = LocalGpus.open("none", replicas=1, nvml=two_gpus())
    assert hidden.env(5, {})["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize(("text", "message"), [
    ("2", r"local_gpus='2': no GPU \[2\] on this machine \(NVML sees 2\)"),
    ("gpu0", r"local_gpus='gpu0': accepted: '' \(not pinned\), 'none', 'all'"),
])
def test_a_device_that_is_not_there_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        LocalGpus.open(text, replicas=1, nvml=two_gpus())


def test_recording_writes_csv_files_and_shuts_nvml_down(tmp_path):
    nvml = two_gpus()
    gpus = LocalGpus.open("1,0", replicas=2, nvml=nvml)
    assert gpus.start(str(tmp_path / "gpu"), interval_s=0.05, flush_interval_s=0.05)
    time.sleep(0.4)
    nvml.devices[1].gpu_pct = 55.0  # the next readings see the change
    time.sleep(0.2)
    gpus.close()
    assert nvml.calls[-1] == "shutdown"
    rows = []
    for path in sorted((tmp_path / "gpu").glob("gpu-*.csv")):
        with path.open() as handle:
            reader = csv.reader(handle)
            assert tuple(next(reader)) == gpu.SAMPLE_COLUMNS
            rows += list(reader)
    assert {(r[1], r[2]) for r in rows} == {("0", "1"), ("1", "0")}
    assert {r[3] for r in rows if r[2] == "1"} == {"90.0", "55.0"}
    assert all(r[6] == "" for r in rows if r[2] == "1")  # device 1 reports no power


def test_without_nvml_nothing_is_recorded_and_it_is_said_once(tmp_path, caplog):
    """This machine: pynvml is installed, the NVML library is not (the real bindings)."""
    with caplog.at_level(logging.INFO, logger="caio_operators.metrics.gpu"):
        gpus = LocalGpus.open("", replicas=2)
        started = gpus.start(str(tmp_path / "gpu"), 0.05, 0.05)
        time.sleep(0.2)
        gpus.close()
    assert started is False
    assert not (tmp_path / "gpu").exists()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1
    assert said[0].startswith("no GPU samples: NVML is not usable here (NVMLError")
    assert gpus.env(0, {}) == {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}  # not pinned: no change


def test_without_the_bindings_nothing_is_recorded(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert gpu.load_nvml() is None
    with caplog.at_level(logging.INFO, logger="caio_operators.metrics.gpu"):
        gpus = LocalGpus.open("all", replicas=2)
        assert gpus.start(str(tmp_path / "gpu"), 0.05, 0.05) is False
        gpus.close()
    assert [r.getMessage() for r in caplog.records] == [
        "no GPU samples: nvidia-ml-py (pynvml) is not installed"]
    assert gpus.env(1, {})["CUDA_VISIBLE_DEVICES"] == ""  # 'all' of no GPU: none visible


def test_a_driver_failure_is_no_crash():
    nvml = FakeNvml(devices=[FakeDevice()], init_error="Driver Not Loaded")
    gpus = LocalGpus.open("", replicas=1, nvml=nvml)
    assert (gpus.device_count, gpus.why) == (
        0, "NVML is not usable here (NVMLError: Driver Not Loaded)")
    assert gpu.inventory(nvml) == {"driver": "", "devices": []}


def test_inventory_names_models_and_driver_for_provenance():
    assert gpu.inventory(two_gpus()) == {"driver": "550.54.15", "devices": [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_mb": 81920},
        {"index": 1, "name": "NVIDIA H100 80GB HBM3", "memory_total_mb": 81920}]}


def test_provenance_records_an_empty_gpu_inventory_here():
    from caio_operators import provenance

    assert provenance.collect()["gpus"] == {"driver": "", "devices": []}


def test_local_gpus_param_is_validated(images_dir, tmp_path):
    schema = param_schema(tmp_path, images_dir)

    def check(**params):
        return validate_params(params, schema, dag_id="caio_load_test", airflow_run_id="r")

    assert check(local_gpus="0,2").local_gpus == "0,2"
    assert check().local_gpus == ""
    with pytest.raises(SpecError, match=r"local_gpus='gpu0': not a GPU choice"):
        check(local_gpus="gpu0")
    with pytest.raises(SpecError, match=r"local_gpus='all': only the local model server"):
        check(local_gpus="all", target="endpoint", endpoint_url="http://127.0.0.1:1/x")


def test_the_server_refuses_a_gpu_that_is_not_there(tmp_path):
    """The real supervisor: a missing device fails before any replica starts."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-m", "caio_operators.targets.local_server", "--model-dir",
         str(model), "--port", "0", "--gpus", "0"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "local_gpus='0': no GPU [0] on this machine (NVML sees 0)" in done.stderr
    assert "NVML is not usable here" in done.stderr


def test_gpus_enter_the_benchmark_only_when_there_are_any():
    from caio_operators.benchmark import HOST, benchmark_fields

    params = {"target": "local", "load_shape": "constant", "replicas": 2}
    machine = {"machine": "x86_64", "cpu_count": 16}
    with_gpu = {**machine, "gpus": gpu.inventory(two_gpus())}
    assert benchmark_fields(params, machine)[HOST] == "x86_64 x16 cpus"  # as before
    assert benchmark_fields(params, {**machine, "gpus": gpu.inventory()}
                            )[HOST] == "x86_64 x16 cpus"  # this machine: NVML finds no GPU
    assert benchmark_fields(params, with_gpu)[HOST] == (
        "x86_64 x16 cpus, NVIDIA H100 80GB HBM3, NVIDIA H100 80GB HBM3")
    assert "local_gpus" not in benchmark_fields({**params, "local_gpus": ""}, machine)
    assert benchmark_fields({**params, "local_gpus": "0"}, machine)["local_gpus"] == "0"


@pytest.mark.slow
def test_a_real_server_pins_its_replicas_and_still_samples_cpu(tiny_model_dir, tmp_path):
    """local_gpus='none' on this GPU-less machine: each replica's environment hides every
    GPU, the log says once that there are no GPU samples, CPU samples go on."""
    import psutil
    import requests

    from caio_operators.targets.local import LocalTarget

    target = LocalTarget()
    deployment = target.deploy(
        model_uri=str(tiny_model_dir), model_name="tiny", model_version="3", replicas=2,
        server_dir=str(tmp_path / "server"), max_lifetime_s=300, startup_timeout_s=240,
        gpus="none")
    try:
        assert requests.get(deployment["health_url"], timeout=10).status_code == 200
        for pid in deployment["replica_pids"]:
            env = psutil.Process(pid).environ()
            assert env["CUDA_VISIBLE_DEVICES"] == ""
            assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
        samples = tmp_path / "server" / "samples"
        deadline = time.monotonic() + 15
        while not list(samples.glob("samples-*.csv")) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert list(samples.glob("samples-*.csv"))
    finally:
        target.undeploy(deployment)
    log = pathlib.Path(deployment["log_path"]).read_text()
    assert "GPUs hidden from the replicas (local_gpus=none)" in log
    assert log.count("no GPU samples:") == 1
    assert not list((tmp_path / "server" / "gpu").glob("*.csv"))
