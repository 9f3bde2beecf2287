"""The regression logic on synthetic samples with literal figures."""

from __future__ import annotations

import numpy as np
import pytest

from caio_operators.analysis import compare as cmp


def sample(latencies, per_second=(100.0,) * 20, peak=None, run_id="r"):
    return cmp.RunSample(run_id, np.asarray(latencies, float), np.asarray(per_second, float),
                         peak)


def lognormal(seed: int, n: int = 2000, scale: float = 1.0):
    return np.random.default_rng(seed).lognormal(np.log(50.0), 0.3, n) * scale


def test_literal_shift_of_twenty_percent():
    base = sample(np.arange(1, 101))            # p50 50, p95 95, p99 99 (nearest rank)
    cand = sample(np.arange(1, 101) * 1.2)      # p50 60, p95 114, p99 118.8
    out = cmp.compare_runs(cand, base, percentile_name="p95", threshold=0.10)
    p95 = out.row("p95_ms")
    assert (p95["baseline"], p95["candidate"]) == (95.0, 114.0)
    assert p95["change"] == pytest.approx(0.20)
    assert out.row("p50_ms")["candidate"] == 60.0 and out.row("p99_ms")["baseline"] == 99.0
    assert p95["ci_low"] > 0 and p95["worse"]
    assert out.verdict == cmp.REGRESSION
    assert "p95_ms 95 -> 114 (+20.0%" in out.reason


def test_a_known_twenty_percent_shift_is_found():
    base = sample(lognormal(1))
    cand = sample(lognormal(2, scale=1.2))
    out = cmp.compare_runs(cand, base, percentile_name="p99", threshold=0.10, seed=3)
    p99 = out.row("p99_ms")
    assert 0.10 < p99["change"] < 0.30 and p99["ci_low"] > 0
    assert out.verdict == cmp.REGRESSION
    # the same shift the other way is an improvement, not a regression
    assert cmp.compare_runs(base, cand, percentile_name="p99").verdict == cmp.IMPROVEMENT


def test_no_shift_raises_no_alarm_in_at_least_95_percent_of_seeds():
    seeds = range(200)
    alarms = sum(
        cmp.compare_runs(sample(lognormal(2 * s)), sample(lognormal(2 * s + 1)),
                         percentile_name="p95", seed=s).verdict == cmp.REGRESSION
        for s in seeds)
    assert alarms <= 0.05 * len(seeds), f"{alarms} false alarms in {len(seeds)} seeds"


def test_a_shift_within_the_threshold_is_no_change_even_when_significant():
    base = sample(np.arange(1, 10001) / 100)
    cand = sample(np.arange(1, 10001) / 100 * 1.05)  # +5%, tight interval
    out = cmp.compare_runs(cand, base, threshold=0.10)
    assert out.row("p95_ms")["ci_low"] > 0 and not out.row("p95_ms")["worse"]
    assert out.verdict == cmp.NO_CHANGE


def test_max_sustainable_throughput_drop_is_a_regression_without_interval():
    same = np.arange(1, 101)
    out = cmp.compare_runs(sample(same, peak=80.0), sample(same, peak=100.0))
    peak = out.row("max_sustainable_rps")
    assert peak["change"] == pytest.approx(-0.20) and peak["ci_low"] is None and peak["worse"]
    assert out.verdict == cmp.REGRESSION and "no interval" in out.reason
    # absent on either side (no peak search ran): the percentile alone decides
    out = cmp.compare_runs(sample(same, peak=None), sample(same, peak=100.0))
    assert out.row("max_sustainable_rps")["change"] is None
    assert out.verdict == cmp.NO_CHANGE


def test_throughput_change_has_an_interval():
    out = cmp.compare_runs(sample([10.0] * 50, per_second=[80, 82, 78, 81, 79] * 4),
                           sample([10.0] * 50, per_second=[100, 102, 98, 101, 99] * 4))
    tp = out.row("throughput_rps")
    assert (tp["candidate"], tp["baseline"]) == (80.0, 100.0)
    assert tp["change"] == pytest.approx(-0.2) and tp["ci_high"] < 0 and tp["worse"]


def test_no_baseline():
    out = cmp.compare_runs(sample([1.0, 2.0]), None)
    assert out.verdict == cmp.NO_BASELINE and out.rows == []


def test_order_statistic_draws_match_resampling():
    """The Beta shortcut gives the distribution of the percentile of real resamples."""
    rng = np.random.default_rng(0)
    x = np.sort(rng.lognormal(0, 1, 60))
    fast = cmp.bootstrap_percentile(x, 95, 40000, np.random.default_rng(1))
    resampled = x[np.random.default_rng(2).integers(0, x.size, (40000, x.size))]
    slow = np.sort(resampled, axis=1)[:, int(np.ceil(0.95 * x.size)) - 1]
    # same probability on every sample value: total variation distance ~ sampling noise
    p_fast = np.searchsorted(x, fast)
    p_slow = np.searchsorted(x, slow)
    tv = 0.5 * np.abs(np.bincount(p_fast, minlength=x.size)
                      - np.bincount(p_slow, minlength=x.size)).sum() / fast.size
    assert tv < 0.02


def test_seeded_and_checked():
    a, b = sample(lognormal(5)), sample(lognormal(6))
    assert cmp.compare_runs(a, b, seed=7).rows == cmp.compare_runs(a, b, seed=7).rows
    with pytest.raises(ValueError, match="p90"):
        cmp.compare_runs(a, b, percentile_name="p90")
    with pytest.raises(ValueError, match="fraction"):
        cmp.compare_runs(a, b, threshold=10)
