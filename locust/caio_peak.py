"""Peak search as a pure state machine (no locust or gevent import: tests load this by path).

The question: what is the highest arrival rate the target sustains with the latency
percentile under ``slo_ms`` and the error rate under ``max_error_rate``? The controller is
fed one :class:`Window` of measurements at a time and answers hold (keep the current rate),
step (go to another rate) or done (with the highest passing rate). It never reads a clock
or sends a request, so the caller (the Locust master) owns time and the tests own the server.

Each rate is held until it is *stable* (:func:`is_stable`: the last ``windows`` windows each
have at least ``min_requests`` requests and their throughputs, and latencies, spread by at
most ``tolerance`` of their mean), or until it clearly fails (the last ``windows`` windows
all breach the SLO: an overloaded open system never stabilises, its queue and latency just
grow), or until ``max_windows`` windows have passed without either (failed as unstable).

Search: multiply the rate by ``factor`` while steps pass; once one fails, bisect between the
last passing and first failing rate until ``(hi - lo) / lo < precision``. If the first rate
already fails, divide by ``factor`` until one passes (or the rate falls below ``min_rate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

HOLD, STEP, DONE = "hold", "step", "done"


@dataclass(frozen=True)
class Window:
    """One measurement window at the current rate: achieved ``throughput_rps`` (completed
    requests per second), the SLO percentile of latency in ms, and request/error counts
    (``errors`` includes sends the generator dropped: the rate was not served)."""

    throughput_rps: float
    latency_ms: float
    requests: int
    errors: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def _within(values: Sequence[float], tolerance: float) -> bool:
    """The spread (max - min) is at most ``tolerance`` of the mean."""
    mean = sum(values) / len(values)
    if mean == 0:
        return all(v == 0 for v in values)
    return max(values) - min(values) <= tolerance * mean


def is_stable(windows: Sequence[Window], *, n: int = 3, tolerance: float = 0.10,
              min_requests: int = 100) -> bool:
    """True when the last ``n`` windows each saw at least ``min_requests`` requests and their
    throughputs, and their latencies, each spread (max - min) by at most ``tolerance`` of
    their mean."""
    last = list(windows[-n:])
    if len(last) < n or any(w.requests < min_requests for w in last):
        return False
    return (_within([w.throughput_rps for w in last], tolerance)
            and _within([w.latency_ms for w in last], tolerance))


@dataclass(frozen=True)
class Verdict:
    """The judgement of one held rate, for the report."""

    rate: float
    latency_ms: float
    error_rate: float
    throughput_rps: float
    windows: int
    passed: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    """``action`` hold: keep ``rate``; step: switch to ``rate``; done: ``rate`` is the highest
    sustainable rate found (0.0 if none passed)."""

    action: str
    rate: float
    reason: str = ""


@dataclass
class PeakSearch:
    """Feed :meth:`observe` one :class:`Window` at a time at :attr:`rate`."""

    start_rate: float
    slo_ms: float
    slo_percentile: float = 99.0
    max_error_rate: float = 0.01
    factor: float = 2.0
    precision: float = 0.05
    windows: int = 3
    tolerance: float = 0.10
    min_requests: int = 100
    max_windows: int = 20
    max_rate: float = float("inf")
    min_rate: float = 0.1
    history: list[Verdict] = field(default_factory=list)
    rate: float = field(init=False)
    lo: float | None = field(default=None, init=False)
    hi: float | None = field(default=None, init=False)
    done: bool = field(default=False, init=False)
    _current: list[Window] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        for name in ("start_rate", "slo_ms", "precision", "min_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PeakSearch.{name} is {getattr(self, name)!r}; it must be > 0")
        if not self.factor > 1:
            raise ValueError(f"PeakSearch.factor is {self.factor!r}; it must be > 1")
        if self.max_windows < self.windows:
            raise ValueError(f"PeakSearch.max_windows ({self.max_windows}) must be >= windows "
                             f"({self.windows})")
        self.rate = min(float(self.start_rate), self.max_rate)

    def observe(self, window: Window) -> Decision:
        """Record one window at the current rate and say what to do next."""
        if self.done:
            raise RuntimeError("PeakSearch.observe() after it was done; start a new search")
        self._current.append(window)
        verdict = self._judge()
        if verdict is None:
            return Decision(HOLD, self.rate, f"waiting for {self.windows} stable windows")
        self.history.append(verdict)
        self._current = []
        return self._next(verdict)

    def _breaches(self, w: Window) -> str:
        pct = f"p{self.slo_percentile:g}"
        if w.error_rate > self.max_error_rate:
            return f"error rate {w.error_rate:.2%} > {self.max_error_rate:.2%}"
        if w.latency_ms >= self.slo_ms:
            return f"{pct} {w.latency_ms:g} ms >= SLO {self.slo_ms:g} ms"
        if w.throughput_rps < (1 - self.tolerance) * self.rate:
            return (f"throughput {w.throughput_rps:g}/s below the offered {self.rate:g}/s "
                    f"by more than {self.tolerance:.0%}")
        return ""

    def _judge(self) -> Verdict | None:
        last = self._current[-self.windows:]
        enough = (len(last) == self.windows
                  and all(w.requests >= self.min_requests for w in last))
        breaches = [self._breaches(w) for w in last]
        stable = is_stable(self._current, n=self.windows, tolerance=self.tolerance,
                           min_requests=self.min_requests)
        if stable:
            # judge the stable stretch as a whole: pooled errors, mean latency and throughput
            pooled = Window(
                throughput_rps=sum(w.throughput_rps for w in last) / len(last),
                latency_ms=sum(w.latency_ms for w in last) / len(last),
                requests=sum(w.requests for w in last), errors=sum(w.errors for w in last))
            reason = self._breaches(pooled)
            return self._verdict(pooled, not reason, reason or "stable and within the SLO")
        if enough and all(breaches):
            return self._verdict(last[-1], False, f"{breaches[-1]} in {self.windows} "
                                                  "consecutive windows")
        if len(self._current) >= self.max_windows:
            return self._verdict(last[-1], False,
                                 f"not stable after {self.max_windows} windows")
        return None

    def _verdict(self, w: Window, passed: bool, reason: str) -> Verdict:
        return Verdict(self.rate, w.latency_ms, w.error_rate, w.throughput_rps,
                       len(self._current), passed, reason)

    def _step(self, rate: float, reason: str) -> Decision:
        self.rate = rate
        return Decision(STEP, rate, reason)

    def _finish(self, reason: str) -> Decision:
        self.done = True
        return Decision(DONE, self.lo or 0.0, reason)

    def _next(self, verdict: Verdict) -> Decision:
        if verdict.passed:
            self.lo = verdict.rate
        else:
            self.hi = verdict.rate
        if self.hi is None:  # still stepping up
            if self.rate >= self.max_rate:
                return self._finish(f"max_rate {self.max_rate:g}/s passes")
            return self._step(min(self.rate * self.factor, self.max_rate), "step up")
        if self.lo is None:  # even the lowest rate tried fails: step down
            lower = self.rate / self.factor
            if lower < self.min_rate:
                return self._finish(f"no rate >= min_rate {self.min_rate:g}/s passes")
            return self._step(lower, "step down")
        if (self.hi - self.lo) / self.lo < self.precision:
            return self._finish(f"converged: {self.lo:g}/s passes, {self.hi:g}/s fails")
        return self._step((self.lo + self.hi) / 2, "bisect")
