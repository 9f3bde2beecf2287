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


def test_unstable_rate_fails_after_max_windows(peak_mod):
    search = peak_mod.PeakSearch(start_rate=50, slo_ms=100, max_windows=6, max_rate=50,
                                 min_rate=50)
    lats = [30, 45, 30, 45, 30, 45]
    decisions = [search.observe(W(peak_mod, 50, lat, n=500)) for lat in lats]
    assert [d.action for d in decisions] == ["hold"] * 5 + ["done"]
    assert decisions[-1].rate == 0.0  # nothing passed
    (verdict,) = search.history
    assert (verdict.passed, verdict.reason) == (False, "not stable after 6 windows")


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
