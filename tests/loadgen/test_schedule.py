"""Open-loop arrival schedules and the in-flight limiter (locust/caio_schedule.py), literal
numbers."""

from __future__ import annotations

import itertools
import statistics

import pytest
from pytest import approx


def test_constant_rate_sends_every_one_over_rate(schedule_mod):
    times = list(schedule_mod.intended_times(schedule_mod.constant_profile(10, 1.0)))
    assert times == approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])


def test_constant_split_across_workers_has_the_whole_schedule_as_union(schedule_mod):
    profile = schedule_mod.constant_profile(12, 1.0)
    per_worker = [list(schedule_mod.intended_times(profile, workers=3, worker=i))
                  for i in range(3)]
    assert per_worker[0] == approx([0.0, 0.25, 0.5, 0.75])
    assert per_worker[1] == approx([1 / 12, 1 / 12 + 0.25, 1 / 12 + 0.5, 1 / 12 + 0.75])
    union = schedule_mod.merged_times(
        [schedule_mod.intended_times(profile, workers=3, worker=i) for i in range(3)])
    assert union == approx([k / 12 for k in range(12)])
    # each worker's (rate, phase) says the same
    assert schedule_mod.worker_share(12, 3, 1) == approx((4.0, 1 / 12))


def test_staircase_profile_steps_and_caps(schedule_mod):
    profile = schedule_mod.staircase_profile(
        start_rate=10, step_rate=5, step_duration_s=2, max_rate=20, duration_s=9)
    assert profile.segments == ((0.0, 10.0), (2.0, 15.0), (4.0, 20.0))
    assert [profile.rate_at(t) for t in (0, 1.99, 2, 3.5, 4, 8.99, 9, -1)] == [
        10, 10, 15, 15, 20, 20, 0, 0]
    assert profile.expected_count() == approx(2 * 10 + 2 * 15 + 5 * 20)
    times = list(schedule_mod.intended_times(profile))
    assert len(times) == 150
    # 20 arrivals in the first step, 30 in the second, spaced 1/rate
    assert times[19] == approx(1.9)
    assert times[20] == approx(2.0)
    assert times[21] == approx(2.0 + 1 / 15)
    assert times[50] == approx(4.0)
    assert times[-1] == approx(9.0 - 1 / 20)


def test_spike_profile_and_zero_rate_gaps(schedule_mod):
    spike = schedule_mod.spike_profile(
        base_rate=2, spike_rate=20, spike_start_s=3, spike_duration_s=1, duration_s=6)
    assert spike.segments == ((0.0, 2.0), (3.0, 20.0), (4.0, 2.0))
    times = list(schedule_mod.intended_times(spike))
    assert len(times) == 6 + 20 + 4
    assert sum(1 for t in times if 3 <= t < 4) == 20
    # an idle gap: the 11th arrival waits for the next non-zero segment
    gap = schedule_mod.RateProfile(((0.0, 10.0), (1.0, 0.0), (2.0, 10.0)), 3.0)
    times = list(schedule_mod.intended_times(gap))
    assert len(times) == 20
    assert times[9] == approx(0.9)
    assert times[10] == approx(2.0)


def test_poisson_is_seeded_and_has_the_right_rate_and_spread(schedule_mod):
    profile = schedule_mod.constant_profile(200, 50.0)
    a = list(schedule_mod.intended_times(profile, arrivals="poisson", seed=7))
    b = list(schedule_mod.intended_times(profile, arrivals="poisson", seed=7))
    c = list(schedule_mod.intended_times(profile, arrivals="poisson", seed=8))
    assert a == b
    assert a != c
    assert a == sorted(a)
    assert a[0] >= 0 and a[-1] < 50
    # 10,000 expected: a Poisson count is within 4 sigma (400) of it
    assert abs(len(a) - 10_000) < 400
    gaps = [y - x for x, y in itertools.pairwise(a)]
    # exponential gaps: mean 5 ms, standard deviation equal to the mean
    assert statistics.fmean(gaps) == approx(0.005, rel=0.05)
    assert statistics.stdev(gaps) == approx(0.005, rel=0.05)


def test_poisson_split_across_workers_adds_up_to_the_total_rate(schedule_mod):
    profile = schedule_mod.staircase_profile(
        start_rate=100, step_rate=100, step_duration_s=10, max_rate=300, duration_s=30)
    streams = [list(schedule_mod.intended_times(profile, arrivals="poisson", workers=4,
                                                worker=i, seed=1)) for i in range(4)]
    assert len({s[0] for s in streams}) == 4  # independent streams
    union = sorted(itertools.chain(*streams))
    for start, rate in ((0, 100), (10, 200), (20, 300)):
        count = sum(1 for t in union if start <= t < start + 10)
        assert abs(count - rate * 10) < 4 * (rate * 10) ** 0.5


def test_bad_arguments_are_named(schedule_mod):
    with pytest.raises(ValueError, match="arrivals is 'bursty'"):
        next(schedule_mod.intended_times(schedule_mod.constant_profile(1, 1), arrivals="bursty"))
    with pytest.raises(ValueError, match="worker 3 of 3"):
        next(schedule_mod.intended_times(schedule_mod.constant_profile(1, 1), workers=3,
                                         worker=3))
    with pytest.raises(ValueError, match="strictly increasing"):
        schedule_mod.RateProfile(((0.0, 1.0), (2.0, 1.0), (1.0, 1.0)), 3)
    with pytest.raises(ValueError, match="max_in_flight"):
        schedule_mod.InFlightLimiter(0)


def test_limiter_classifies_on_time_late_and_dropped(schedule_mod):
    limiter = schedule_mod.InFlightLimiter(2, late_after_ms=1.0, drop_after_ms=500.0)
    a = limiter.admit(10.0, 10.0005)
    assert (a.outcome, a.lateness_ms, a.started) == ("on_time", approx(0.5), True)
    b = limiter.admit(10.1, 10.125)
    assert (b.outcome, b.lateness_ms) == ("late", approx(25.0))
    # two in flight: the third is dropped for the cap, and not counted in flight
    c = limiter.admit(10.2, 10.2)
    assert (c.outcome, c.started) == ("dropped_cap", False)
    assert limiter.in_flight == 2
    limiter.finish()
    # a send that could only start 600 ms late is dropped, even with room in flight
    d = limiter.admit(10.3, 10.9)
    assert (d.outcome, d.lateness_ms) == ("dropped_late", approx(600.0))
    e = limiter.admit(10.95, 10.9)  # early (the caller woke before time): on time
    assert (e.outcome, e.lateness_ms) == ("on_time", 0.0)
    assert limiter.counts == {"on_time": 2, "late": 1, "dropped_cap": 1, "dropped_late": 1}
    assert limiter.dropped == 2
    assert limiter.max_lateness_ms == approx(25.0)
    limiter.finish()
    limiter.finish()
    with pytest.raises(RuntimeError, match="without a started request"):
        limiter.finish()


def test_latency_is_measured_from_the_intended_time(schedule_mod):
    # intended at 1.000 s, started 40 ms late, answered 10 ms after the start
    assert schedule_mod.latency_from_intended_ms(1.0, 1.05) == approx(50.0)


def test_a_slow_server_shows_up_as_lateness_and_drops_not_as_a_lower_rate(schedule_mod):
    """Simulate 100 req/s against a server that takes 49 ms each, with room for 2 in flight:
    it can do 40 req/s, so the open loop must drop or delay the rest, never just slow down."""
    limiter = schedule_mod.InFlightLimiter(2, drop_after_ms=100.0)
    ends: list[float] = []
    for t in schedule_mod.intended_times(schedule_mod.constant_profile(100, 1.0)):
        while ends and min(ends) <= t:
            ends.remove(min(ends))
            limiter.finish()
        if limiter.admit(t, t).started:
            ends.append(t + 0.049)
    assert limiter.counts["on_time"] == 40
    assert limiter.dropped == 60


def test_an_hour_at_ten_thousand_per_second_is_generated_lazily(schedule_mod):
    profile = schedule_mod.constant_profile(10_000, 3_600)
    assert profile.expected_count() == 36_000_000
    stream = schedule_mod.intended_times(profile, workers=4, worker=3)
    assert list(itertools.islice(stream, 3)) == approx([0.0003, 0.0007, 0.0011])
    # the cursor carries on across segments, so late arrivals cost no more than early ones
    stairs = schedule_mod.staircase_profile(start_rate=100, step_rate=100, step_duration_s=1,
                                            max_rate=10_000, duration_s=200)
    times = list(schedule_mod.intended_times(stairs))
    assert len(times) == round(stairs.expected_count())
    assert times[-1] == approx(200 - 1 / 10_000)
    assert schedule_mod.inverse_cumulative(stairs, 150.0) == approx(1.25)  # 100 + 50 of 200


def test_profile_for_each_open_rate_profile(schedule_mod):
    base = {"rate": 30.0, "duration_s": 20.0}
    assert schedule_mod.profile_for(base).segments == ((0.0, 30.0),)
    stairs = schedule_mod.profile_for({**base, "rate_profile": "staircase", "step_rate": 10.0,
                                       "step_duration_s": 5.0})
    assert stairs.segments == ((0.0, 10.0), (5.0, 20.0), (10.0, 30.0))
    assert stairs.expected_count() == 10 * 5 + 20 * 5 + 30 * 10
    spike = schedule_mod.profile_for({**base, "rate_profile": "spike", "spike_rate": 100.0,
                                      "spike_start_s": 8.0, "spike_duration_s": 2.0})
    assert spike.segments == ((0.0, 30.0), (8.0, 100.0), (10.0, 30.0))
    assert spike.expected_count() == 30 * 18 + 100 * 2
    with pytest.raises(ValueError, match="rate_profile is 'ramp'"):
        schedule_mod.profile_for({**base, "rate_profile": "ramp"})
