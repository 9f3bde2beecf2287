"""Open-loop arrival schedules as pure code (no locust or gevent import: tests load this by path).

An open-loop load generator sends requests at *intended* times fixed in advance by the
arrival rate, whatever the server does; a closed loop (Locust users waiting for each
response) slows down with the server and hides its queueing delay (coordinated omission).

A rate profile is a list of piecewise-constant ``(start_s, rate)`` segments ending at
``duration_s``. Intended send times come from inverting the cumulative rate
``L(t) = integral of rate from 0 to t``: arrival ``k`` of a constant schedule is at
``L^-1(k)``; a Poisson schedule puts them at ``L^-1(E1 + ... + Ek)`` with ``Ek`` unit
exponentials (the time-rescaling theorem), which is an exact non-homogeneous Poisson process.
Splitting across ``N`` workers: worker ``i`` of a constant schedule takes arrivals
``k = i, i + N, i + 2N, ...`` (its share, phase-shifted, so the union is the whole schedule);
for Poisson each worker runs an independent process at ``rate / N`` whose superposition is
Poisson at ``rate``.

:class:`InFlightLimiter` classifies each intended send, given the clock reading passed in, as
started on time, started late (by how much) or dropped (in-flight cap reached, or later than
a bound). Latency is then measured from the intended time, not from the actual start.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

ARRIVALS = ("constant", "poisson")


@dataclass(frozen=True)
class RateProfile:
    """Piecewise-constant arrival rate: ``segments`` are ``(start_s, rate_per_s)`` sorted by
    start, the first at 0; each lasts until the next start, the last until ``duration_s``."""

    segments: tuple[tuple[float, float], ...]
    duration_s: float

    def __post_init__(self) -> None:
        if not self.segments or self.segments[0][0] != 0:
            raise ValueError("RateProfile.segments must start with a segment at 0 s")
        starts = [s for s, _ in self.segments]
        if starts != sorted(starts) or len(set(starts)) != len(starts):
            raise ValueError(f"RateProfile segment starts {starts} must be strictly increasing")
        if any(r < 0 or not math.isfinite(r) for _, r in self.segments):
            raise ValueError("RateProfile rates must be finite numbers >= 0")
        if not self.duration_s > 0:
            raise ValueError(f"RateProfile.duration_s is {self.duration_s!r}; it must be > 0")

    def rate_at(self, t: float) -> float:
        """Intended arrivals per second at ``t`` seconds (0 outside ``[0, duration_s)``)."""
        if t < 0 or t >= self.duration_s:
            return 0.0
        rate = 0.0
        for start, r in self.segments:
            if start > t:
                break
            rate = r
        return rate

    def spans(self) -> list[tuple[float, float, float]]:
        """``(start_s, end_s, rate)`` of each segment, clipped to ``duration_s``."""
        ends = [s for s, _ in self.segments[1:]] + [self.duration_s]
        return [(s, min(e, self.duration_s), r)
                for (s, r), e in zip(self.segments, ends, strict=True) if s < self.duration_s]

    def expected_count(self) -> float:
        """``L(duration_s)``: how many arrivals the whole profile intends."""
        return sum((e - s) * r for s, e, r in self.spans())

    def scaled(self, factor: float) -> RateProfile:
        """The same shape at ``factor`` times the rate (e.g. one worker's share)."""
        return RateProfile(tuple((s, r * factor) for s, r in self.segments), self.duration_s)


def constant_profile(rate: float, duration_s: float) -> RateProfile:
    """``rate`` req/s from 0 to ``duration_s``."""
    return RateProfile(((0.0, float(rate)),), float(duration_s))


def staircase_profile(
    *, start_rate: float, step_rate: float, step_duration_s: float, max_rate: float,
    duration_s: float,
) -> RateProfile:
    """``start_rate`` at 0 s, ``step_rate`` more every ``step_duration_s``, capped at
    ``max_rate``; ends at ``duration_s`` whatever step it is on."""
    if not step_duration_s > 0:
        raise ValueError(f"step_duration_s is {step_duration_s!r}; it must be > 0")
    segments: list[tuple[float, float]] = []
    t, rate = 0.0, min(float(start_rate), float(max_rate))
    while t < duration_s:
        if not segments or segments[-1][1] != rate:
            segments.append((t, rate))
        t += step_duration_s
        rate = min(rate + step_rate, float(max_rate))
    return RateProfile(tuple(segments), float(duration_s))


def spike_profile(
    *, base_rate: float, spike_rate: float, spike_start_s: float, spike_duration_s: float,
    duration_s: float,
) -> RateProfile:
    """``base_rate`` throughout except ``spike_rate`` for ``spike_duration_s`` from
    ``spike_start_s``."""
    if not 0 < spike_start_s < duration_s or not spike_duration_s > 0:
        raise ValueError(
            f"spike at {spike_start_s!r} s for {spike_duration_s!r} s must start inside "
            f"(0, {duration_s}) and last > 0 s")
    segments = [(0.0, float(base_rate)), (float(spike_start_s), float(spike_rate))]
    end = spike_start_s + spike_duration_s
    if end < duration_s:
        segments.append((float(end), float(base_rate)))
    return RateProfile(tuple(segments), float(duration_s))


PROFILES = ("constant", "staircase", "spike")


def profile_for(shape: dict) -> RateProfile:
    """The rate profile an open_rate shape mapping describes (``rate_profile``, default
    constant): constant ``rate``; staircase from ``step_rate`` up by ``step_rate`` every
    ``step_duration_s`` to ``rate``; spike at ``spike_rate`` for ``spike_duration_s`` from
    ``spike_start_s`` over a base of ``rate``."""
    kind = shape.get("rate_profile", "constant")
    rate, duration = float(shape["rate"]), float(shape["duration_s"])
    if kind == "constant":
        return constant_profile(rate, duration)
    if kind == "staircase":
        step = float(shape["step_rate"])
        return staircase_profile(start_rate=step, step_rate=step,
                                 step_duration_s=float(shape["step_duration_s"]),
                                 max_rate=rate, duration_s=duration)
    if kind == "spike":
        return spike_profile(base_rate=rate, spike_rate=float(shape["spike_rate"]),
                             spike_start_s=float(shape["spike_start_s"]),
                             spike_duration_s=float(shape["spike_duration_s"]),
                             duration_s=duration)
    raise ValueError(f"rate_profile is {kind!r}; use one of {', '.join(PROFILES)}")


def inverse_cumulative(profile: RateProfile, x: float) -> float | None:
    """The time ``t`` at which ``L(t) = x``, skipping zero-rate gaps (an arrival exactly at
    the end of a segment belongs to the next non-zero one); ``None`` past the end."""
    return _Inverse(profile)(x)


class _Inverse:
    """``L^-1`` for increasing ``x``: a cursor over the segments makes each call O(1)
    (a worker asks once per request, thousands of times a second)."""

    def __init__(self, profile: RateProfile):
        self.spans = [(s, e, r) for s, e, r in profile.spans() if r > 0]
        self.i = 0
        self.done = 0.0  # L at the start of span i

    def __call__(self, x: float) -> float | None:
        while self.i < len(self.spans):
            start, end, rate = self.spans[self.i]
            span = (end - start) * rate
            if x < self.done + span:
                return start + (x - self.done) / rate
            self.done += span
            self.i += 1
        return None


def intended_times(
    profile: RateProfile, *, arrivals: str = "constant", workers: int = 1, worker: int = 0,
    seed: int = 0,
) -> Iterator[float]:
    """Lazily yield worker ``worker`` of ``workers``' intended send offsets (seconds from the
    start of the profile), in increasing order; lazy because an hour at 10k req/s is 36M."""
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals is {arrivals!r}; use one of {', '.join(ARRIVALS)}")
    if workers < 1 or not 0 <= worker < workers:
        raise ValueError(f"worker {worker!r} of {workers!r}: need workers >= 1, 0 <= worker < "
                         "workers")
    if arrivals == "constant":
        k, inverse = worker, _Inverse(profile)
        while (t := inverse(float(k))) is not None:
            yield t
            k += workers
        return
    # Each worker its own stream, a function of (seed, worker) only, so reruns repeat.
    rng = random.Random(f"{seed}:{worker}")  # noqa: S311 - a schedule, not a secret
    inverse = _Inverse(profile.scaled(1.0 / workers))
    x = rng.expovariate(1.0)
    while (t := inverse(x)) is not None:
        yield t
        x += rng.expovariate(1.0)


def worker_share(rate: float, workers: int, worker: int) -> tuple[float, float]:
    """Worker ``worker``'s ``(rate, phase_s)`` of a constant ``rate`` split over ``workers``:
    it sends every ``workers / rate`` seconds starting ``worker / rate`` in."""
    if rate <= 0 or workers < 1 or not 0 <= worker < workers:
        raise ValueError(f"need rate > 0 and 0 <= worker < workers; got rate={rate!r}, "
                         f"worker={worker!r}, workers={workers!r}")
    return rate / workers, worker / rate


def merged_times(streams: Sequence[Iterator[float]]) -> list[float]:
    """All workers' intended times as one sorted list (for tests and reports, not an hour)."""
    return sorted(t for stream in streams for t in stream)


# --- in-flight limiter ------------------------------------------------------------------

ON_TIME, LATE, DROPPED_CAP, DROPPED_LATE = "on_time", "late", "dropped_cap", "dropped_late"


@dataclass(frozen=True)
class Admission:
    """What happened to one intended send: ``outcome`` is one of ``on_time``, ``late``,
    ``dropped_cap`` (``max_in_flight`` requests were already in flight) or ``dropped_late``
    (it could only start more than ``drop_after_ms`` after its intended time)."""

    outcome: str
    lateness_ms: float

    @property
    def started(self) -> bool:
        return self.outcome in (ON_TIME, LATE)


class InFlightLimiter:
    """Accounts for intended sends against a clock the caller passes in (deterministic).

    ``late_after_ms``: a start within this of the intended time counts as on time (timer
    jitter); ``drop_after_ms``: a send that cannot start within this of its intended time is
    dropped and counted, not sent (sending it would only measure the generator's backlog).
    """

    def __init__(self, max_in_flight: int, *, late_after_ms: float = 1.0,
                 drop_after_ms: float = 1000.0):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight is {max_in_flight!r}; it must be >= 1")
        if not 0 <= late_after_ms <= drop_after_ms:
            raise ValueError(f"need 0 <= late_after_ms ({late_after_ms}) <= drop_after_ms "
                             f"({drop_after_ms})")
        self.max_in_flight = max_in_flight
        self.late_after_ms = late_after_ms
        self.drop_after_ms = drop_after_ms
        self.in_flight = 0
        self.counts = {ON_TIME: 0, LATE: 0, DROPPED_CAP: 0, DROPPED_LATE: 0}
        self.max_lateness_ms = 0.0

    def admit(self, intended_s: float, now_s: float) -> Admission:
        """Classify the send intended at ``intended_s`` being attempted at ``now_s``; a started
        one is in flight until :meth:`finish`."""
        lateness_ms = max(0.0, (now_s - intended_s) * 1000.0)
        if lateness_ms > self.drop_after_ms:
            outcome = DROPPED_LATE
        elif self.in_flight >= self.max_in_flight:
            outcome = DROPPED_CAP
        else:
            outcome = ON_TIME if lateness_ms <= self.late_after_ms else LATE
            self.in_flight += 1
            self.max_lateness_ms = max(self.max_lateness_ms, lateness_ms)
        self.counts[outcome] += 1
        return Admission(outcome, lateness_ms)

    def finish(self) -> None:
        """A started request completed (ok or not)."""
        if self.in_flight <= 0:
            raise RuntimeError("InFlightLimiter.finish() without a started request")
        self.in_flight -= 1

    @property
    def dropped(self) -> int:
        return self.counts[DROPPED_CAP] + self.counts[DROPPED_LATE]


def latency_from_intended_ms(intended_s: float, end_s: float) -> float:
    """Latency as the user of an open system sees it: from when the request should have been
    sent (not when the generator got round to it) to its response."""
    return (end_s - intended_s) * 1000.0
