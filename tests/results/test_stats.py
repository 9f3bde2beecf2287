"""Exact percentiles, interval bins and throughput on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from caio_operators.results import stats


def records(ts, latency, ok):
    return pd.DataFrame({"ts": ts, "latency_ms": latency, "ok": ok})


def test_nearest_rank_percentiles_on_1_to_100():
    got = stats.percentiles(range(1, 101))
    assert got == {50.0: 50.0, 90.0: 90.0, 95.0: 95.0, 99.0: 99.0, 99.9: 100.0}


def test_nearest_rank_picks_observed_values_never_interpolates():
    # unsorted input; rank = ceil(p/100 * n): p50 -> rank 2, p95 -> rank 4, p25 -> rank 1
    assert stats.percentiles([40, 10, 30, 20], (25, 50, 95)) == {25.0: 10.0, 50.0: 20.0,
                                                                  95.0: 40.0}
    assert stats.percentiles([7.5], (50, 99.9)) == {50.0: 7.5, 99.9: 7.5}


def test_p999_rank_is_not_pushed_up_by_float_error():
    # 99.9 * 1000 / 100 is 999.0000000000001 in floating point; the rank must stay 999
    assert stats.percentiles(np.arange(1, 1001), (99.9,)) == {99.9: 999.0}


def test_percentiles_ignore_nan_and_are_nan_when_empty():
    assert stats.percentiles([np.nan, 5.0, 1.0], (50,)) == {50.0: 1.0}
    assert math.isnan(stats.percentiles([], (50,))[50.0])
    with pytest.raises(ValueError, match="outside"):
        stats.percentiles([1.0], (0,))


def test_latency_summary_counts_failures_and_times_successes_only():
    rec = records([1, 2, 3, 4, 5], [10.0, 20.0, 30.0, 1000.0, 40.0], [True, True, True,
                                                                     False, True])
    got = stats.latency_summary(rec)
    assert got["requests"] == 5 and got["failures"] == 1
    assert got["error_rate"] == pytest.approx(0.2)
    assert (got["p50_ms"], got["p90_ms"], got["p99_ms"], got["max_ms"]) == (20.0, 40.0, 40.0,
                                                                            40.0)
    assert got["mean_ms"] == pytest.approx(25.0)


def test_latency_summary_of_nothing():
    got = stats.latency_summary(records([], [], []))
    assert got["requests"] == 0 and got["failures"] == 0
    assert math.isnan(got["error_rate"]) and math.isnan(got["p50_ms"])


def test_interval_stats_bins_counts_rates_and_percentiles():
    rec = records([10.0, 10.2, 10.9, 11.5, 13.1], [5.0, 1.0, 3.0, 100.0, 7.0],
                  [True, True, True, False, True])
    got = stats.interval_stats(rec, interval_s=1.0)
    assert got["ts"].tolist() == [10.0, 11.0, 12.0, 13.0]  # the idle second 12 is kept
    assert got["requests"].tolist() == [3, 1, 0, 1]
    assert got["failures"].tolist() == [0, 1, 0, 0]
    assert got["request_rate_rps"].tolist() == [3.0, 1.0, 0.0, 1.0]
    assert got["failure_rate_rps"].tolist() == [0.0, 1.0, 0.0, 0.0]
    # second 10 holds 1, 3, 5: p50 is rank 2 -> 3, p95/p99 rank 3 -> 5
    assert got["p50_ms"].tolist()[0] == 3.0 and got["p95_ms"].tolist()[0] == 5.0
    assert got["p99_ms"].tolist()[3] == 7.0
    # a second with only a failure, and an idle second, have no latency
    assert np.isnan(got["p50_ms"].tolist()[1]) and np.isnan(got["p50_ms"].tolist()[2])


def test_interval_stats_wider_bins_are_epoch_aligned():
    rec = records([10.0, 10.2, 10.9, 11.5, 13.1], [5.0, 1.0, 3.0, 100.0, 7.0],
                  [True, True, True, False, True])
    got = stats.interval_stats(rec, interval_s=2.0)
    assert got["ts"].tolist() == [10.0, 12.0]
    assert got["requests"].tolist() == [4, 1]
    assert got["request_rate_rps"].tolist() == [2.0, 0.5]
    assert got["p50_ms"].tolist() == [3.0, 7.0]


def test_interval_stats_accepts_utc_datetimes():
    ts = pd.to_datetime([10.0, 10.2, 11.5], unit="s", utc=True)
    got = stats.interval_stats(records(ts, [5.0, 1.0, 2.0], [True, True, True]))
    assert got["ts"].tolist() == [10.0, 11.0]
    assert got["requests"].tolist() == [2, 1]


def test_interval_stats_empty_has_columns():
    got = stats.interval_stats(records([], [], []))
    assert got.empty
    assert list(got.columns) == ["ts", "requests", "failures", "request_rate_rps",
                                 "failure_rate_rps", "p50_ms", "p95_ms", "p99_ms"]


def test_interval_aggregate_mean_max_last_per_group():
    samples = pd.DataFrame({"ts": [0.1, 0.6, 0.2, 1.5], "replica": ["a", "a", "b", "a"],
                            "cpu": [50.0, 70.0, 20.0, 90.0]})
    mean = stats.interval_aggregate(samples, "cpu", 1.0, by="replica", how="mean")
    assert mean.values.tolist() == [[0.0, "a", 60.0], [0.0, "b", 20.0], [1.0, "a", 90.0]]
    assert stats.interval_aggregate(samples, "cpu", 1.0, how="max")["value"].tolist() == [
        70.0, 90.0]
    assert stats.interval_aggregate(samples, "cpu", 1.0, how="last")["value"].tolist() == [
        20.0, 90.0]
    with pytest.raises(ValueError, match="how"):
        stats.interval_aggregate(samples, "cpu", how="median")


def test_steady_window_trims_ten_percent_each_end():
    assert stats.steady_window(pd.Series(np.arange(0.0, 101.0))) == (10.0, 90.0)
    assert stats.steady_window(np.array([5.0])) is None
    assert stats.steady_window(np.array([5.0, 5.0])) is None


def test_throughput_counts_successes_in_the_steady_window():
    ts = np.arange(0.0, 101.0)  # one request per second for 100 s
    ok = np.ones(ts.size, dtype=bool)
    assert stats.throughput_rps(records(ts, np.ones(ts.size), ok)) == pytest.approx(1.0)
    ok[20:40] = False  # 20 failures inside the window [10, 90)
    assert stats.throughput_rps(records(ts, np.ones(ts.size), ok)) == pytest.approx(60 / 80)
    # an explicit window, untrimmed
    got = stats.throughput_rps(records(ts, np.ones(ts.size), np.ones(ts.size, bool)),
                               window=(0.0, 100.0))
    assert got == pytest.approx(1.0)


def test_goodput_counts_successes_within_the_slo_in_the_steady_window():
    ts = np.arange(0.0, 101.0)  # one request per second for 100 s; window [10, 90)
    latency = np.full(ts.size, 100.0)
    latency[30:50] = 250.0  # 20 slow ones inside the window
    latency[50] = 200.0  # exactly at the SLO: meets it
    ok = np.ones(ts.size, dtype=bool)
    ok[60:65] = False  # 5 fast failures: not goodput
    rec = records(ts, latency, ok)
    assert stats.goodput_rps(rec, slo_ms=200.0) == pytest.approx((80 - 20 - 5) / 80)
    assert stats.throughput_rps(rec) == pytest.approx(75 / 80)
    assert stats.goodput_rps(rec, slo_ms=300.0) == pytest.approx(75 / 80)
    assert stats.goodput_rps(rec, slo_ms=50.0) == 0.0
    assert math.isnan(stats.goodput_rps(records([1.0], [1.0], [True]), slo_ms=200.0))
    with pytest.raises(ValueError, match="slo_ms must be > 0"):
        stats.goodput_rps(rec, slo_ms=0)


def test_interval_goodput_per_epoch_aligned_interval():
    rec = records([10.1, 10.5, 10.9, 11.2, 13.0], [10.0, 30.0, np.nan, 19.0, 21.0],
                  [True, True, False, True, True])
    got = stats.interval_goodput(rec, slo_ms=20.0, interval_s=1.0)
    assert got["ts"].tolist() == [10.0, 11.0, 12.0, 13.0]
    assert got["goodput_rps"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert stats.interval_goodput(rec, slo_ms=20.0, interval_s=2.0)[
        "goodput_rps"].tolist() == [1.0, 0.0]
    assert stats.interval_goodput(records([], [], []), slo_ms=20.0).empty


def test_throughput_without_a_window_is_nan():
    assert math.isnan(stats.throughput_rps(records([1.0], [1.0], [True])))
    assert math.isnan(stats.throughput_rps(records([], [], [])))
