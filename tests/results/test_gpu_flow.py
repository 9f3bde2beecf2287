"""GPU series from a fake NVML through the sample files, harvest, DuckDB, the summary's peak
GPU and the report's GPU panel; and a cloud run's accelerator series the same way."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from caio_testing import chart_data
from fake_nvml import FakeDevice, FakeNvml

from caio_operators import storage
from caio_operators.analysis.report import analyse_run
from caio_operators.metrics import gpu as nvml_gpu
from caio_operators.results import gpu
from caio_operators.results import schema as sc
from caio_operators.results.harvest import harvest_run
from caio_operators.results.warehouse import open_warehouse
from caio_operators.targets.records import CsvBatchWriter

GIB = 2**30
#: (ts, device 0 %, device 1 %, device 0 memory used GiB): what the fake NVML reports
READINGS = [(1000.0, 20.0, 60.0, 1), (1000.5, 40.0, 80.0, 3), (1001.0, 95.0, 10.0, 2),
            (1002.0, 50.0, 0.0, 2)]


def record_with_fake_nvml(layout) -> None:
    """What the local server does with local_gpus='0,1' and 2 replicas, with the sampler's
    clock in the test's hands: replica 0 on device 0, replica 1 on device 1 (no power)."""
    nvml = FakeNvml(devices=[FakeDevice(power_mw=200_000), FakeDevice(power_mw=None)])
    gpus = nvml_gpu.LocalGpus.open("0,1", replicas=2, nvml=nvml)
    sampler = nvml_gpu.GpuSampler(nvml, nvml_gpu.sampled_pairs(
        gpus.assignment, gpus.devices, gpus.device_count))
    writer = CsvBatchWriter(storage.local_path(gpu.gpu_samples_dir(layout)), "gpu",
                            nvml_gpu.SAMPLE_COLUMNS)
    writer.directory.mkdir(parents=True)
    for ts, first, second, used in READINGS:
        nvml.devices[0].gpu_pct, nvml.devices[1].gpu_pct = first, second
        nvml.devices[0].used_bytes = used * GIB
        for row in sampler.sample(ts):
            writer.add(row)
        writer.flush()
    gpus.close()


@pytest.fixture
def gpu_run(small_run, meta, warehouse_uri):
    record_with_fake_nvml(small_run)
    result = harvest_run(small_run, meta, warehouse_uri)
    return small_run, result


def series(timeseries: pd.DataFrame, metric: str, dimension: str) -> list[tuple[float, float]]:
    rows = timeseries[(timeseries["metric"] == metric) & (timeseries["dimension"] == dimension)]
    return [(t.timestamp(), v) for t, v in zip(rows["ts"], rows["value"], strict=True)]


def test_fake_nvml_series_reach_the_warehouse_summary_and_report(gpu_run, warehouse_uri):
    layout, result = gpu_run
    assert result["figures"]["peak_gpu_pct"] == 95.0
    stored = open_warehouse(warehouse_uri).read_run("run-1")
    ts = stored["timeseries"]
    # one naming with the cloud's accelerator series; per replica and device
    assert series(ts, sc.GPU_UTILIZATION_PCT, "replica-0/gpu-0") == [
        (1000.0, 30.0), (1001.0, 95.0), (1002.0, 50.0)]
    assert series(ts, sc.GPU_UTILIZATION_PCT, "replica-1/gpu-1") == [
        (1000.0, 70.0), (1001.0, 10.0), (1002.0, 0.0)]
    assert series(ts, sc.GPU_MEMORY_USED_MB, "replica-0/gpu-0") == [
        (1000.0, 2048.0), (1001.0, 2048.0), (1002.0, 2048.0)]
    assert series(ts, sc.GPU_MEMORY_TOTAL_MB, "replica-1/gpu-1")[0] == (1000.0, 81920.0)
    assert series(ts, sc.GPU_POWER_W, "replica-0/gpu-0")[0] == (1000.0, 200.0)
    assert series(ts, sc.GPU_POWER_W, "replica-1/gpu-1") == []  # the board reports none
    assert stored["runs"].iloc[0]["peak_gpu_pct"] == 95.0
    # the CPU samples are untouched by the GPU files beside them
    assert set(ts.loc[ts["metric"] == sc.CPU_UTILIZATION_PCT, "dimension"]) == {
        "replica-0", "replica-1"}

    out = analyse_run(warehouse_uri, "run-1", layout)
    assert out["summary"]["peak_gpu_pct"] == 95.0
    assert "peak GPU    95 % duty cycle (busiest GPU)" in out["summary_text"]
    page = storage.read_text(layout.report_html)
    assert "peak GPU utilisation (busiest GPU)" in page
    charts = {c["key"]: c for c in chart_data(page)}
    assert charts["gpu"]["title"] == "GPU utilisation per replica/device"
    util = dict(zip([s["label"] for s in charts["gpu"]["series"]],
                    charts["gpu"]["data"][1:], strict=True))
    assert [v for v in util["replica-0/gpu-0"] if v is not None] == [30.0, 95.0, 50.0]
    memory = [s["label"] for s in charts["gpu_memory"]["series"]]
    assert {"replica-0/gpu-0", "replica-1/gpu-1 total"} <= set(memory)


def test_a_run_without_gpu_files_has_no_gpu_series_and_no_peak(small_run, meta,
                                                                 warehouse_uri):
    result = harvest_run(small_run, meta, warehouse_uri)
    assert result["figures"]["peak_gpu_pct"] is None
    ts = open_warehouse(warehouse_uri).read_run("run-1")["timeseries"]
    assert not ts["metric"].str.startswith("gpu_").any()


def test_cloud_accelerator_series_feed_the_same_peak_and_panel(small_run, meta,
                                                               warehouse_uri):
    """Cloud Monitoring's duty cycle ('all') arrives as extra rows: same metric, same peak."""
    extra = pd.DataFrame({
        "run_id": "run-1", "ts": pd.to_datetime([960.0, 1020.0], unit="s", utc=True),
        "metric": sc.GPU_UTILIZATION_PCT, "dimension": sc.DIMENSION_ALL,
        "value": [41.5, 73.25]})
    result = harvest_run(small_run, {**meta, "target": "vertex"}, warehouse_uri,
                         extra_timeseries=extra)
    assert result["figures"]["peak_gpu_pct"] == 73.25
    out = analyse_run(warehouse_uri, "run-1", small_run)
    assert out["summary"]["peak_gpu_pct"] == 73.25
    charts = {c["key"]: c for c in chart_data(storage.read_text(small_run.report_html))}
    assert [s["label"] for s in charts["gpu"]["series"]] == [sc.DIMENSION_ALL]
    assert "gpu_memory" not in charts  # the cloud's GPU memory is not harvested


def test_gpu_timeseries_pure_rules():
    samples = pd.DataFrame({
        "ts": [10.2, 10.7, 11.1, math.nan], "replica": ["", "", "3", "0"],
        "device": [1, 1, 0, 0], "gpu_pct": [10.0, 30.0, 50.0, 99.0],
        "memory_used_mb": [1.0, 3.0, math.nan, 9.0], "memory_total_mb": [8.0, 8.0, 8.0, 8.0],
        "power_w": [math.nan] * 4})
    rows = gpu.gpu_timeseries("r", samples)
    got = {(m, d, t.timestamp(), v) for m, d, t, v in zip(
        rows["metric"], rows["dimension"], rows["ts"], rows["value"], strict=True)}
    assert got == {
        (sc.GPU_UTILIZATION_PCT, "gpu-1", 10.0, 20.0),
        (sc.GPU_UTILIZATION_PCT, "replica-3/gpu-0", 11.0, 50.0),
        (sc.GPU_MEMORY_USED_MB, "gpu-1", 10.0, 2.0),
        (sc.GPU_MEMORY_TOTAL_MB, "gpu-1", 10.0, 8.0),
        (sc.GPU_MEMORY_TOTAL_MB, "replica-3/gpu-0", 11.0, 8.0),
    }
    assert gpu.peak_gpu_pct(rows) == 50.0
    assert math.isnan(gpu.peak_gpu_pct(sc.empty_frame("timeseries")))


def test_unpinned_samples_read_back_as_device_dimensions(tmp_path):
    """A sample file of replicas that share every GPU (empty replica column)."""
    directory = tmp_path / "gpu"
    directory.mkdir()
    (directory / "gpu-000000.csv").write_text(
        ",".join(nvml_gpu.SAMPLE_COLUMNS) + "\n"
        "5.2,,0,12.5,100.0,1000.0,70.0\n5.9,,0,37.5,300.0,1000.0,\n")
    samples = gpu.read_gpu_samples(storage.to_uri(directory))
    rows = gpu.gpu_timeseries("r", samples)
    assert set(rows["dimension"]) == {"gpu-0"}
    by_metric = dict(zip(rows["metric"], rows["value"], strict=True))
    assert by_metric == {sc.GPU_UTILIZATION_PCT: 25.0, sc.GPU_MEMORY_USED_MB: 200.0,
                         sc.GPU_MEMORY_TOTAL_MB: 1000.0, sc.GPU_POWER_W: 70.0}
