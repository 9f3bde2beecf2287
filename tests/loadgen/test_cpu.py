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


def test_a_busy_loop_reads_as_a_saturated_core(cpu_mod):
    samples = [(time.time(), time.process_time())]
    for _ in range(3):
        end = time.perf_counter() + 0.1
        while time.perf_counter() < end:
            pass
        samples.append((time.time(), time.process_time()))
    percents = cpu_mod.cpu_percent(samples)
    print(f"busy loop: {[round(p) for p in percents]} % of a core")
    assert len(percents) == 3
    # a shared machine may steal some of it, but a spinning process is far above idle
    assert all(p > 30 for p in percents)
