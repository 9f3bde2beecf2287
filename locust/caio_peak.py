"""Peak search as a pure state machine (no locust or gevent import: tests load this by path).

The question: what is the highest arrival rate the target sustains with the latency
percentile under ``slo_ms`` and the error rate under ``max_error_rate``? The controller is
fed one :class:`Window` of measurements at a time and answers hold (keep the current rate),
step (go to another rate) or done (with the highest passing rate). It never reads a clock
or sends a request, so the caller (the Locust master) owns time and the tests own the server.

Each rate is held until it is *stable* (:func:`is_stable`: the last ``windows`` windows each
have at least ``min_requests`` requests and their throughputs, and median latencies, spread
by at most ``tolerance`` of their mean, or by at most ``LATENCY_FLOOR_MS`` for latencies;
the SLO percentile of the stable stretch is then the
mean of theirs), or until it clearly fails (the last ``windows`` windows
all breach the SLO: an overloaded open system never stabilises, its queue and latency just
grow), or until ``max_windows`` windows have passed without either: then the whole stretch
is judged (the median window's latency, mean throughput, pooled errors), since a latency
that never settles within ``tolerance`` is noise at that rate, not a verdict.

Search: multiply the rate by ``factor`` while steps pass; once one fails, bisect between the
last passing and first failing rate until ``(hi - lo) / lo < precision``. If the first rate
already fails, divide by ``factor`` until one passes (or the rate falls below ``min_rate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HOLD, STEP, DONE = "hold", "step", "done"
#: latencies that differ by less than this are the same steady state: a Python load
#: generator's timers and scheduling move a median by about a millisecond on their own, which
#: is more than 10% of a fast model's 3-5 ms (the e2e peak search then held one rate for 20
#: windows of medians between 2.5 and 4.8 ms)
LATENCY_FLOOR_MS = 1.0


@dataclass(frozen=True)
class Window:
    """One measurement window at the current rate: achieved ``throughput_rps`` (completed
    requests per second), the SLO percentile of latency in ms, and request/error counts
    (``errors`` includes sends the generator dropped: the rate was not served)."""

    throughput_rps: float
    latency_ms: float
    requests: int
    errors: int = 0
    #: the window's median latency, when known: what stability is judged on (a p99 of a few
    #: hundred requests is close to their maximum and jumps from window to window even when
    #: the system is in a steady state; the median settles)
    median_ms: float | None = None

    @property
    def settled_ms(self) -> float:
        return self.latency_ms if self.median_ms is None else self.median_ms

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def _within(values: Sequence[float], tolerance: float, floor: float = 0.0) -> bool:
    """The spread (max - min) is at most ``tolerance`` of the mean, or at most ``floor``."""
    mean = sum(values) / len(values)
    if mean == 0:
        return all(v == 0 for v in values)
    return max(values) - min(values) <= max(tolerance * mean, floor)


def is_stable(windows: Sequence[Window], *, n: int = 3, tolerance: float = 0.10,
              min_requests: int = 100) -> bool:
    """True when the last ``n`` windows each saw at least ``min_requests`` requests and their
    throughputs, and their latencies (median when known, see ``Window.median_ms``), each
    spread (max - min) by at most ``tolerance`` of their mean (latencies: or by at most
    ``LATENCY_FLOOR_MS``)."""
    last = list(windows[-n:])
    if len(last) < n or any(w.requests < min_requests for w in last):
        return False
    return (_within([w.throughput_rps for w in last], tolerance)
            and _within([w.settled_ms for w in last], tolerance, LATENCY_FLOOR_MS))


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
    #: seconds per window; when set, a window at a low rate needs only half the requests
    #: that rate puts in it (``min_requests`` could never be met at 2 req/s in 5 s windows)
    window_s: float = 0.0
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

    def needed_requests(self) -> int:
        """Requests a window at the current rate needs to count (see ``window_s``)."""
        if self.window_s > 0:
            return min(self.min_requests, max(1, int(0.5 * self.rate * self.window_s)))
        return self.min_requests

    def _judge(self) -> Verdict | None:
        last = self._current[-self.windows:]
        needed = self.needed_requests()
        enough = len(last) == self.windows and all(w.requests >= needed for w in last)
        breaches = [self._breaches(w) for w in last]
        stable = is_stable(self._current, n=self.windows, tolerance=self.tolerance,
                           min_requests=needed)
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
            # noisy but judged: the typical (median) window's latency, mean throughput and
            # pooled errors of the whole stretch
            ws = self._current
            pooled = Window(
                throughput_rps=sum(w.throughput_rps for w in ws) / len(ws),
                latency_ms=sorted(w.latency_ms for w in ws)[len(ws) // 2],
                requests=sum(w.requests for w in ws), errors=sum(w.errors for w in ws))
            reason = self._breaches(pooled)
            return self._verdict(pooled, not reason,
                                 f"not stable after {self.max_windows} windows; on all of "
                                 f"them: {reason or 'within the SLO'}")
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


def search_from_shape(shape: dict) -> PeakSearch:
    """The controller a ``peak_search`` shape mapping describes (``shapes.validate``d)."""
    max_rate = float(shape.get("max_rate") or 0.0)
    return PeakSearch(
        start_rate=float(shape["rate"]), slo_ms=float(shape["slo_ms"]),
        slo_percentile=float(shape["slo_percentile"]),
        max_error_rate=float(shape["max_error_rate"]), precision=float(shape["precision"]),
        min_requests=int(shape["min_requests"]), window_s=float(shape["window_s"]),
        max_rate=max_rate if max_rate > 0 else float("inf"))


class WindowCollector:
    """Gathers the workers' reports of each measurement window at the current step.

    Every worker sends one report per ``(step, seq)`` window. A window is complete when all
    ``workers`` reported it, or when ``stale_after`` later windows of the same step are
    complete without some worker (dead or stuck: the search goes on with the rest). The
    first ``settle`` windows of each step are dropped: they mix responses to the previous
    rate with the new one. Reports for other steps than the current one are ignored.
    """

    def __init__(self, workers: int, *, settle: int = 1, stale_after: int = 2):
        if workers < 1:
            raise ValueError(f"workers is {workers!r}; it must be >= 1")
        self.workers = workers
        self.settle = settle
        self.stale_after = stale_after
        self.step = 0
        self.next_seq = 0
        self._pending: dict[int, dict[str, Any]] = {}

    def start_step(self, step: int) -> None:
        self.step, self.next_seq, self._pending = step, 0, {}

    def add(self, step: int, seq: int, worker: str, item: Any) -> list[tuple[int, list[Any]]]:
        """Record one worker's report; return the windows ``(seq, items)`` now complete, in
        order, settle windows left out."""
        if step != self.step or seq < self.next_seq:
            return []
        self._pending.setdefault(seq, {})[worker] = item
        out = []
        while self.next_seq in self._pending:
            seq_now = self.next_seq
            got = self._pending[seq_now]
            newest = max(self._pending)
            if len(got) < self.workers and newest - seq_now < self.stale_after:
                break
            del self._pending[seq_now]
            self.next_seq += 1
            if seq_now >= self.settle:
                out.append((seq_now, list(got.values())))
        return out


def search_report(search: PeakSearch, windows: Sequence[dict[str, Any]], *, status: str,
                  reason: str, window_s: float) -> dict[str, Any]:
    """The JSON the master writes after every window (``<output>/peak/search.json``):
    settings, status (running | converged | budget | stopped), the highest rate that
    passed, each step's verdict and every window judged."""
    return {
        "status": status,
        "reason": reason,
        "max_sustainable_rps": search.lo,
        "slo_ms": search.slo_ms,
        "slo_percentile": search.slo_percentile,
        "max_error_rate": search.max_error_rate,
        "precision": search.precision,
        "window_s": window_s,
        "stable_windows": search.windows,
        "tolerance": search.tolerance,
        "min_requests": search.min_requests,
        "steps": [dict(step=i, **vars(v)) for i, v in enumerate(search.history)],
        "windows": list(windows),
    }
