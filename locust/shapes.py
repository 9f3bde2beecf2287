"""Load shapes as pure functions of the run time (no locust import: tests load this by path).

A tick answers "how many users, spawned at what rate, at ``run_time`` seconds?" or ``None``
when the test is over. ``locustfile.ConfigShape`` calls :func:`tick` once a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KINDS = ("constant", "staircase", "open_rate", "peak_search")
OPEN_LOOP = ("open_rate", "peak_search")  # one request scheduler per worker, no users
ARRIVALS = ("constant", "poisson")
RATE_PROFILES = ("constant", "staircase", "spike")

Tick = tuple[int, float] | None


def constant_tick(run_time: float, *, users: int, spawn_rate: float, duration_s: float) -> Tick:
    """``users`` users from the start until ``duration_s``."""
    if run_time >= duration_s:
        return None
    return users, spawn_rate


def staircase_tick(
    run_time: float,
    *,
    users: int,
    spawn_rate: float,
    duration_s: float,
    step_users: int,
    step_duration_s: float,
) -> Tick:
    """``step_users`` users at 0 s, ``step_users`` more every ``step_duration_s``, capped at
    ``users``; the test ends at ``duration_s`` whatever step it is on."""
    if run_time >= duration_s:
        return None
    step = int(run_time // step_duration_s)
    return min(users, step_users * (step + 1)), spawn_rate


def open_rate_tick(run_time: float, *, workers: int, duration_s: float,
                   drain_s: float = 0.0) -> Tick:
    """Open loop: one user per worker (it hosts that worker's request scheduler) from the
    start until ``duration_s`` plus ``drain_s`` for the last requests to complete; all
    spawned at once so the workers' schedules start together."""
    if run_time >= duration_s + drain_s:
        return None
    return workers, float(max(workers, 100))


def steps(shape: Mapping[str, Any]) -> list[tuple[float, int]]:
    """The planned ``(start_s, users)`` steps of a shape, e.g. for a report or a log line."""
    validate(shape)
    if shape["kind"] in OPEN_LOOP:
        return []  # no users to step: the rate is the shape
    if shape["kind"] == "constant":
        return [(0.0, int(shape["users"]))]
    out: list[tuple[float, int]] = []
    t = 0.0
    while t < float(shape["duration_s"]):
        tick_ = tick(shape, t)
        assert tick_ is not None
        if not out or out[-1][1] != tick_[0]:
            out.append((t, tick_[0]))
        t += float(shape["step_duration_s"])
    return out


def tick(shape: Mapping[str, Any], run_time: float, workers: int = 1) -> Tick:
    """The tick of the shape described by a test config's ``shape`` mapping (``workers``:
    how many Locust workers there are, for open_rate and peak_search; a peak search also
    ends when its controller is done, which the locustfile checks)."""
    if shape["kind"] in OPEN_LOOP:
        return open_rate_tick(run_time, workers=workers,
                              duration_s=float(shape["duration_s"]),
                              drain_s=float(shape.get("drain_s", 0.0)))
    if shape["kind"] == "constant":
        return constant_tick(
            run_time,
            users=int(shape["users"]),
            spawn_rate=float(shape["spawn_rate"]),
            duration_s=float(shape["duration_s"]),
        )
    return staircase_tick(
        run_time,
        users=int(shape["users"]),
        spawn_rate=float(shape["spawn_rate"]),
        duration_s=float(shape["duration_s"]),
        step_users=int(shape["step_users"]),
        step_duration_s=float(shape["step_duration_s"]),
    )


def _number(shape: Mapping[str, Any], name: str, *, minimum: float = 0.0,
            inclusive: bool = False, maximum: float | None = None) -> None:
    value: Any = shape.get(name)
    ok = not isinstance(value, bool) and isinstance(value, int | float) and (
        value >= minimum if inclusive else value > minimum)
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        if maximum is not None:
            bound += f" and <= {maximum:g}"
        raise ValueError(f"shape.{name} is {value!r}; it must be a number {bound}")


def _validate_open_loop(shape: Mapping[str, Any]) -> None:
    if shape.get("arrivals") not in ARRIVALS:
        raise ValueError(f"shape.arrivals is {shape.get('arrivals')!r}; use one of "
                         + ", ".join(ARRIVALS))
    _number({"drain_s": shape.get("drain_s", 0.0)}, "drain_s", inclusive=True)
    for name in ("rate", "max_in_flight", "duration_s"):
        _number(shape, name)
    if shape["kind"] == "open_rate":
        profile = shape.get("rate_profile", "constant")
        if profile not in RATE_PROFILES:
            raise ValueError(f"shape.rate_profile is {profile!r}; use one of "
                             + ", ".join(RATE_PROFILES))
        needs = {"constant": (), "staircase": ("step_rate", "step_duration_s"),
                 "spike": ("spike_rate", "spike_start_s", "spike_duration_s")}[profile]
        for name in needs:
            _number(shape, name)
        return
    _number(shape, "slo_ms")
    _number(shape, "slo_percentile", maximum=99.99)
    _number(shape, "max_error_rate", inclusive=True, maximum=1.0)
    _number(shape, "precision", maximum=1.0)
    _number(shape, "window_s")
    _number(shape, "min_requests", inclusive=True)
    _number({"max_rate": shape.get("max_rate", 0.0)}, "max_rate", inclusive=True)


def validate(shape: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first bad field of a shape mapping."""
    kind = shape.get("kind")
    if kind not in KINDS:
        raise ValueError(f"shape.kind is {kind!r}; use one of {', '.join(KINDS)}")
    if kind in OPEN_LOOP:
        _validate_open_loop(shape)
        return
    required = ["users", "spawn_rate", "duration_s"]
    if kind == "staircase":
        required += ["step_users", "step_duration_s"]
    for name in required:
        _number(shape, name)
