"""Stability rule and peak-search controller (locust/caio_peak.py) against synthetic servers
with literal numbers."""

from __future__ import annotations

import pytest


def W(peak_mod, tput, lat, n=1000, errors=0):
    return peak_mod.Window(throughput_rps=tput, latency_ms=lat, requests=n, errors=errors)


def test_stable_needs_n_windows_within_tolerance_with_enough_requests(peak_mod):
    ok = [W(peak_mod, 100, 50), W(peak_mod, 105, 52), W(peak_mod, 96, 48)]
    assert peak_mod.is_stable(ok)
    assert not peak_mod.is_stable(ok[:2])  # only two windows
    # spread 15 is 14% of the mean 105
    assert not peak_mod.is_stable([W(peak_mod, 100, 50), W(peak_mod, 100, 50),
                                   W(peak_mod, 115, 50)])
    assert not peak_mod.is_stable([W(peak_mod, 100, 50), W(peak_mod, 100, 50),
                                   W(peak_mod, 100, 60)])
    assert not peak_mod.is_stable(ok, min_requests=1001)
    # only the last n count: an early outlier does not matter
    assert peak_mod.is_stable([W(peak_mod, 10, 900), *ok])
    # 4 / 52 = 7.7%; 6 / 53 = 11.3%
    assert peak_mod.is_stable([W(peak_mod, 100, 50), W(peak_mod, 100, 54)], n=2)
    assert not peak_mod.is_stable([W(peak_mod, 100, 50), W(peak_mod, 100, 56)], n=2)
    assert peak_mod.is_stable([W(peak_mod, 0, 0), W(peak_mod, 0, 0), W(peak_mod, 0, 0)],
                              min_requests=0)


class Server:
    """Synthetic target: p99 20 ms + 0.1 ms per req/s up to ``capacity`` req/s; above it the
    queue grows, and with it latency, by 40 ms per (req/s over capacity) per window, and
    throughput stays at capacity. The first ``warmup`` windows of each rate are slow and
    short. Above ``error_above`` req/s, ``error_share`` of requests fail."""

    def __init__(self, capacity=120.0, window_s=10.0, warmup=0, error_above=float("inf"),
                 error_share=0.0):
        self.capacity, self.window_s, self.warmup = capacity, window_s, warmup
        self.error_above, self.error_share = error_above, error_share
        self.rate, self.k = None, 0

    def window(self, peak_mod, rate):
        if rate != self.rate:
            self.rate, self.k = rate, 0
        self.k += 1
        tput = min(rate, self.capacity)
        lat = 20 + 0.1 * tput + 40 * max(0.0, rate - self.capacity) * self.k
        n = int(tput * self.window_s)
        if self.k <= self.warmup:
            lat, n = lat * 3, n // 4
        errors = int(n * self.error_share) if rate > self.error_above else 0
        return peak_mod.Window(throughput_rps=tput, latency_ms=lat, requests=n, errors=errors)


def drive(peak_mod, search, server, limit=500):
    decisions = []
    while not search.done and len(decisions) < limit:
        decisions.append(search.observe(server.window(peak_mod, search.rate)))
    assert search.done, "the search did not finish"
    return decisions


def test_search_steps_up_then_bisects_to_the_capacity_within_precision(peak_mod):
    search = peak_mod.PeakSearch(start_rate=10, slo_ms=100, factor=2, precision=0.05)
    decisions = drive(peak_mod, search, Server(capacity=120))
    rates = [v.rate for v in search.history]
    assert rates == [10, 20, 40, 80, 160, 120, 140, 130, 125]
    assert [v.passed for v in search.history] == [True] * 4 + [False, True, False, False, False]
    final = decisions[-1]
    assert (final.action, final.rate) == ("done", 120)
    assert "converged" in final.reason
    # the verdict says why 160 failed: latency grew past the SLO in 3 windows straight
    v160 = search.history[4]
    assert v160.windows == 3
    assert "p99" in v160.reason and ">= SLO 100 ms" in v160.reason
    # a passing step was judged on its stable stretch
    v80 = search.history[3]
    assert (v80.latency_ms, v80.throughput_rps, v80.error_rate) == (28, 80, 0)
    assert v80.reason == "stable and within the SLO"


@pytest.mark.parametrize("capacity", [37.0, 120.0, 333.0, 1000.0])
def test_search_converges_within_precision_for_any_capacity(peak_mod, capacity):
    search = peak_mod.PeakSearch(start_rate=20, slo_ms=200, precision=0.02)
    final = drive(peak_mod, search, Server(capacity=capacity))[-1]
    assert final.action == "done"
    # the answer passes, and the true capacity lies within 2% above it
    assert final.rate <= capacity
    assert (capacity - final.rate) / final.rate < 0.02


def test_search_holds_each_rate_until_stable(peak_mod):
    search = peak_mod.PeakSearch(start_rate=100, slo_ms=1000, max_rate=100)
    server = Server(capacity=500, warmup=2)
    decisions = drive(peak_mod, search, server)
    # 2 warm-up windows (slow, few requests), then 3 stable ones decide
    assert [d.action for d in decisions] == ["hold"] * 4 + ["done"]
    assert decisions[-1].rate == 100
    assert "max_rate 100/s passes" in decisions[-1].reason
    assert search.history[0].windows == 5


def test_errors_above_max_error_rate_fail_a_step(peak_mod):
    # latency is fine up to 300 req/s, but above 60 req/s 5% of requests fail
    search = peak_mod.PeakSearch(start_rate=10, slo_ms=100, max_error_rate=0.01,
                                 precision=0.05)
    drive(peak_mod, search, Server(capacity=300, error_above=60, error_share=0.05))
    failed = [v for v in search.history if not v.passed]
    assert failed and all(v.reason.startswith("error rate 4.9") or
                          v.reason.startswith("error rate 5.00%") for v in failed)
    assert all(v.error_rate > 0.04 for v in failed)
    assert all(v.rate > 60 for v in failed)
    assert search.lo <= 60 and (60 - search.lo) / search.lo < 0.05


def test_unstable_rate_is_judged_on_all_its_windows_after_max_windows(peak_mod):
    search = peak_mod.PeakSearch(start_rate=50, slo_ms=100, max_windows=6, max_rate=50,
                                 min_rate=50)
    lats = [30, 45, 30, 45, 30, 45]  # never within 10%, always well under the SLO
    decisions = [search.observe(W(peak_mod, 50, lat, n=500)) for lat in lats]
    assert [d.action for d in decisions] == ["hold"] * 5 + ["done"]
    assert decisions[-1].rate == 50  # max_rate reached and passed
    (verdict,) = search.history
    assert verdict.passed and verdict.latency_ms == 45  # the median window (upper middle)
    assert verdict.reason == "not stable after 6 windows; on all of them: within the SLO"


def test_unstable_rate_over_the_slo_in_most_windows_fails(peak_mod):
    search = peak_mod.PeakSearch(start_rate=50, slo_ms=100, max_windows=6, max_rate=50,
                                 min_rate=50)
    lats = [80, 150, 90, 160, 95, 140]  # the median window breaches, never 3 in a row
    decisions = [search.observe(W(peak_mod, 50, lat, n=500)) for lat in lats]
    assert decisions[-1].action == "done" and decisions[-1].rate == 0.0
    (verdict,) = search.history
    assert not verdict.passed and verdict.latency_ms == 140
    assert verdict.reason == ("not stable after 6 windows; on all of them: p99 140 ms >= SLO "
                              "100 ms")


def test_first_rate_failing_steps_down(peak_mod):
    search = peak_mod.PeakSearch(start_rate=400, slo_ms=100, precision=0.05)
    final = drive(peak_mod, search, Server(capacity=120))[-1]
    rates = [v.rate for v in search.history]
    assert rates[:3] == [400, 200, 100]
    assert final.rate <= 120 and (120 - final.rate) / final.rate < 0.05


def test_throughput_short_of_the_offered_rate_fails(peak_mod):
    # latency fine but only 70 of the offered 100 req/s complete (the generator fell behind)
    search = peak_mod.PeakSearch(start_rate=100, slo_ms=100, max_rate=100, min_rate=100)
    for _ in range(3):
        decision = search.observe(W(peak_mod, 70, 20))
    assert decision.action == "done"
    assert "throughput 70/s below the offered 100/s" in search.history[0].reason


def test_bad_parameters_and_use_after_done_are_named(peak_mod):
    with pytest.raises(ValueError, match="factor is 1"):
        peak_mod.PeakSearch(start_rate=1, slo_ms=1, factor=1)
    with pytest.raises(ValueError, match="slo_ms is 0"):
        peak_mod.PeakSearch(start_rate=1, slo_ms=0)
    search = peak_mod.PeakSearch(start_rate=10, slo_ms=100, max_rate=10, min_requests=1)
    for _ in range(3):
        search.observe(W(peak_mod, 10, 5))
    with pytest.raises(RuntimeError, match="after it was done"):
        search.observe(W(peak_mod, 10, 5))


def test_window_collector_waits_for_every_worker_and_drops_the_settle_window(peak_mod):
    c = peak_mod.WindowCollector(2, settle=1, stale_after=2)
    assert c.add(0, 0, "a", "a0") == []
    assert c.add(0, 0, "b", "b0") == []  # complete, but the settle window
    assert c.add(0, 1, "a", "a1") == []  # waiting for b
    assert c.add(0, 1, "b", "b1") == [(1, ["a1", "b1"])]
    assert c.add(0, 1, "b", "late duplicate") == []  # already judged


def test_window_collector_goes_on_without_a_silent_worker(peak_mod):
    c = peak_mod.WindowCollector(2, settle=0, stale_after=2)
    assert c.add(0, 0, "a", "a0") == []
    assert c.add(0, 1, "a", "a1") == []
    # two windows later, b is taken for dead: window 0 goes with a alone, then window 1
    assert c.add(0, 2, "a", "a2") == [(0, ["a0"])]
    assert c.add(0, 3, "a", "a3") == [(1, ["a1"])]


def test_window_collector_ignores_reports_of_other_steps(peak_mod):
    c = peak_mod.WindowCollector(1, settle=1)
    assert c.add(0, 1, "a", "x") == []  # seq 0 first
    c.start_step(1)
    assert c.add(0, 2, "a", "old step") == []
    assert c.add(1, 0, "a", "settle") == []
    assert c.add(1, 1, "a", "judged") == [(1, ["judged"])]


def test_search_from_shape_and_the_needed_requests_at_low_rates(peak_mod):
    shape = {"kind": "peak_search", "rate": 4.0, "slo_ms": 200.0, "slo_percentile": 95.0,
             "max_error_rate": 0.02, "precision": 0.1, "window_s": 5.0, "min_requests": 50,
             "max_rate": 0.0}
    search = peak_mod.search_from_shape(shape)
    assert (search.rate, search.slo_ms, search.slo_percentile, search.max_error_rate,
            search.precision, search.max_rate) == (4.0, 200.0, 95.0, 0.02, 0.1, float("inf"))
    assert search.needed_requests() == 10  # half of 4 req/s x 5 s, not 50
    search.rate = 100.0
    assert search.needed_requests() == 50
    capped = peak_mod.search_from_shape({**shape, "max_rate": 64.0})
    assert capped.max_rate == 64.0


def test_search_report_is_json(peak_mod):
    import json

    search = peak_mod.PeakSearch(start_rate=10, slo_ms=100, max_rate=10, min_requests=1)
    for _ in range(3):
        search.observe(W(peak_mod, 10, 20, n=100))
    report = peak_mod.search_report(search, [{"step": 0}], status="converged", reason="r",
                                    window_s=2.0)
    assert json.loads(json.dumps(report))["steps"] == [{
        "step": 0, "rate": 10.0, "latency_ms": 20.0, "error_rate": 0.0, "throughput_rps": 10.0,
        "windows": 3, "passed": True, "reason": "stable and within the SLO"}]
    assert (report["max_sustainable_rps"], report["status"], report["window_s"]) == (
        10.0, "converged", 2.0)


def test_stability_is_judged_on_the_median_when_windows_carry_it(peak_mod):
    def w(p99, p50):
        return peak_mod.Window(throughput_rps=100, latency_ms=p99, requests=200, median_ms=p50)

    noisy_tail = [w(40, 10.0), w(90, 10.4), w(60, 9.9)]  # p99 jumps, the median holds
    assert peak_mod.is_stable(noisy_tail)
    assert not peak_mod.is_stable([w(40, 10.0), w(90, 14.0), w(60, 9.9)])
    search = peak_mod.PeakSearch(start_rate=100, slo_ms=100, max_rate=100, min_requests=100)
    decisions = [search.observe(x) for x in noisy_tail]
    assert [d.action for d in decisions] == ["hold", "hold", "done"]
    (verdict,) = search.history
    assert verdict.passed and verdict.latency_ms == (40 + 90 + 60) / 3  # mean SLO percentile


def test_a_fast_models_latency_is_stable_within_a_millisecond(peak_mod):
    """Medians of a 3-5 ms model move by more than 10% from timer noise alone (the e2e peak
    search's windows: 3.79, 4.22, 4.64 ms); within LATENCY_FLOOR_MS they are one state."""
    def w(p50):
        return peak_mod.Window(throughput_rps=40, latency_ms=6.0, requests=80, median_ms=p50)

    assert peak_mod.LATENCY_FLOOR_MS == 1.0
    assert peak_mod.is_stable([w(3.79), w(4.22), w(4.64)], min_requests=80)  # 0.85 ms apart
    assert not peak_mod.is_stable([w(3.0), w(4.22), w(4.64)], min_requests=80)  # 1.64 ms
    # above 10 ms the relative tolerance is the wider one, as before
    assert peak_mod.is_stable([w(20.0), w(21.0), w(21.9)], min_requests=80)
    assert not peak_mod.is_stable([w(20.0), w(21.0), w(22.5)], min_requests=80)
