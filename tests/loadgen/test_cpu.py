"""Load-generator CPU per window and the saturation verdict (locust/caio_cpu.py)."""

from __future__ import annotations

import time

import pytest
from pytest import approx


def test_cpu_percent_of_one_core_per_window(cpu_mod):
    samples = [(100.0, 5.0), (101.0, 5.5), (103.0, 7.4), (103.0, 7.4), (105.0, 9.4)]
    # 0.5 s of CPU in 1 s; 1.9 in 2; the repeated sample is skipped; 2.0 in 2
    assert cpu_mod.cpu_percent(samples) == approx([50.0, 95.0, 100.0])
    assert cpu_mod.cpu_percent([(1.0, 1.0)]) == []


def test_cpu_time_going_back_is_an_error(cpu_mod):
    with pytest.raises(ValueError, match=r"went back from 2.0 s to 1.0 s"):
        cpu_mod.cpu_percent([(0.0, 2.0), (1.0, 1.0)])


def test_saturation_needs_more_than_the_share_at_or_above_the_threshold(cpu_mod):
    # 1 of 10 windows at 90%: 10% is not more than 10%
    calm = cpu_mod.saturation([90.0] + [40.0] * 9)
    assert (calm.saturated, calm.share, calm.peak, calm.mean) == (False, 0.1, 90.0, 45.0)
    busy = cpu_mod.saturation([95.0, 99.0] + [40.0] * 8)
    assert (busy.saturated, busy.share) == (True, 0.2)
    assert busy.threshold == 90.0 and busy.max_share == 0.1
    assert not cpu_mod.saturation([]).saturated
    strict = cpu_mod.saturation([85.0, 50.0], threshold=80.0, max_share=0.4)
    assert (strict.saturated, strict.share) == (True, 0.5)


def test_busy_windows_read_far_above_idle_ones(cpu_mod):
    """Real samples of this process: three windows spinning for 0.1 s of CPU each, then
    three sleeping 0.1 s. A spinning window's share of a core depends on what else the
    machine runs (so no fixed bound on it), but it is far above a sleeping one's."""
    samples = [(time.time(), time.process_time())]
    for _ in range(3):
        end = time.process_time() + 0.1
        while time.process_time() < end:
            pass
        samples.append((time.time(), time.process_time()))
    for _ in range(3):
        time.sleep(0.1)
        samples.append((time.time(), time.process_time()))
    percents = cpu_mod.cpu_percent(samples)
    print(f"busy then idle: {[round(p) for p in percents]} % of a core")
    assert len(percents) == 6
    busy, idle = percents[:3], percents[3:]
    assert max(idle) < 5 < min(busy) and all(p <= 100.5 for p in busy)


def test_cpu_buffer_writes_one_row_per_window_and_one_file_per_flush(cpu_mod, tmp_path):
    buf = cpu_mod.CpuBuffer(f"file://{tmp_path}", "host-7")
    assert buf.sample(100.0, 5.0) is None  # the first sample opens the first window
    assert buf.sample(101.0, 5.25) == approx(25.0)
    assert buf.sample(101.0, 5.25) is None  # no wall time: no window
    assert buf.sample(103.0, 7.15) == approx(95.0)
    first = buf.flush()
    assert first == f"file://{tmp_path}/workers/worker-host-7-000000.csv"
    assert (tmp_path / "workers/worker-host-7-000000.csv").read_text() == (
        "ts,worker,cpu_percent\n100.000,host-7,25.0\n101.000,host-7,95.0\n")
    assert buf.flush() is None  # nothing new
    buf.sample(104.0, 8.15)
    assert buf.flush().endswith("worker-host-7-000001.csv")
    assert (buf.seq, buf.written) == (2, 3)
    assert sorted(p.name for p in (tmp_path / "workers").iterdir()) == [
        "worker-host-7-000000.csv", "worker-host-7-000001.csv"]


def test_cpu_buffer_keeps_its_rows_when_a_write_fails(cpu_mod, tmp_path):
    (tmp_path / "workers").write_text("a file where the folder should be")
    buf = cpu_mod.CpuBuffer(f"file://{tmp_path}", "w")
    buf.sample(0.0, 0.0)
    buf.sample(1.0, 0.5)
    with pytest.raises(OSError):
        buf.flush()
    assert buf.rows == [("0.000", "w", "50.0")] and buf.seq == 0
