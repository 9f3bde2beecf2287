"""Load shape ticks (locust/shapes.py) with literal numbers."""

from __future__ import annotations

import pytest


def test_constant_holds_users_until_duration(shapes_mod):
    tick = shapes_mod.constant_tick
    assert tick(0.0, users=5, spawn_rate=2, duration_s=10) == (5, 2)
    assert tick(9.99, users=5, spawn_rate=2, duration_s=10) == (5, 2)
    assert tick(10.0, users=5, spawn_rate=2, duration_s=10) is None
    assert tick(11.0, users=5, spawn_rate=2, duration_s=10) is None


@pytest.mark.parametrize(
    ("t", "users"),
    [(0.0, 3), (4.99, 3), (5.0, 6), (9.9, 6), (10.0, 9), (15.0, 10), (29.99, 10)],
)
def test_staircase_adds_step_users_each_step_up_to_users(shapes_mod, t, users):
    kw = {"users": 10, "spawn_rate": 4.0, "duration_s": 30, "step_users": 3,
          "step_duration_s": 5}
    assert shapes_mod.staircase_tick(t, **kw) == (users, 4.0)


def test_staircase_ends_at_duration_even_mid_step(shapes_mod):
    kw = {"users": 10, "spawn_rate": 1, "duration_s": 12, "step_users": 2,
          "step_duration_s": 5}
    assert shapes_mod.staircase_tick(11.9, **kw) == (6, 1)
    assert shapes_mod.staircase_tick(12.0, **kw) is None


def test_tick_dispatches_on_kind(shapes_mod):
    constant = {"kind": "constant", "users": 4, "spawn_rate": 2, "duration_s": 6}
    stairs = {"kind": "staircase", "users": 8, "spawn_rate": 4, "duration_s": 80,
              "step_users": 2, "step_duration_s": 20}
    assert shapes_mod.tick(constant, 5.9) == (4, 2.0)
    assert shapes_mod.tick(constant, 6.0) is None
    assert shapes_mod.tick(stairs, 41.0) == (6, 4.0)
    assert shapes_mod.tick(stairs, 80.0) is None


def test_steps_lists_the_plan(shapes_mod):
    stairs = {"kind": "staircase", "users": 10, "spawn_rate": 4, "duration_s": 30,
              "step_users": 3, "step_duration_s": 5}
    assert shapes_mod.steps(stairs) == [(0.0, 3), (5.0, 6), (10.0, 9), (15.0, 10)]
    assert shapes_mod.steps({"kind": "constant", "users": 7, "spawn_rate": 1,
                             "duration_s": 9}) == [(0.0, 7)]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ({"kind": "ramp"}, "shape.kind is 'ramp'"),
        ({"kind": "constant", "users": 0, "spawn_rate": 1, "duration_s": 5}, "shape.users"),
        ({"kind": "constant", "users": 2, "spawn_rate": 1}, "shape.duration_s is None"),
        ({"kind": "staircase", "users": 2, "spawn_rate": 1, "duration_s": 5, "step_users": 1},
         "shape.step_duration_s"),
        ({"kind": "constant", "users": True, "spawn_rate": 1, "duration_s": 5}, "shape.users"),
    ],
)
def test_validate_names_the_bad_field(shapes_mod, shape, message):
    with pytest.raises(ValueError, match=message):
        shapes_mod.validate(shape)


def test_open_rate_runs_one_user_per_worker_until_the_drain_ends(shapes_mod):
    shape = {"kind": "open_rate", "rate": 50.0, "arrivals": "poisson", "max_in_flight": 8,
             "duration_s": 10.0, "drain_s": 2.0}
    shapes_mod.validate(shape)
    assert shapes_mod.tick(shape, 0.0, workers=3) == (3, 100.0)
    assert shapes_mod.tick(shape, 11.9, workers=3) == (3, 100.0)
    assert shapes_mod.tick(shape, 12.0, workers=3) is None
    assert shapes_mod.steps(shape) == []
    with pytest.raises(ValueError, match=r"shape\.arrivals"):
        shapes_mod.validate({**shape, "arrivals": "bursty"})
    with pytest.raises(ValueError, match=r"shape\.max_in_flight"):
        shapes_mod.validate({**shape, "max_in_flight": 0})


def test_peak_search_and_rate_profiles_validate(shapes_mod):
    peak = {"kind": "peak_search", "rate": 10.0, "arrivals": "constant", "max_in_flight": 8,
            "duration_s": 60.0, "drain_s": 3.0, "slo_ms": 100.0, "slo_percentile": 99.0,
            "max_error_rate": 0.01, "max_rate": 0.0, "precision": 0.05, "window_s": 2.0,
            "min_requests": 50}
    shapes_mod.validate(peak)
    assert shapes_mod.tick(peak, 62.9, workers=2) == (2, 100.0)  # one scheduler per worker
    assert shapes_mod.tick(peak, 63.0, workers=2) is None  # the budget and the drain are up
    for bad, field in (({"slo_ms": 0}, "slo_ms"), ({"slo_percentile": 100}, "slo_percentile"),
                       ({"max_error_rate": 2}, "max_error_rate"), ({"window_s": 0}, "window_s"),
                       ({"max_rate": -1}, "max_rate"), ({"precision": 0}, "precision")):
        with pytest.raises(ValueError, match=rf"shape\.{field}"):
            shapes_mod.validate({**peak, **bad})
    base = {"kind": "open_rate", "rate": 50.0, "arrivals": "constant", "max_in_flight": 8,
            "duration_s": 30.0}
    shapes_mod.validate({**base, "rate_profile": "staircase", "step_rate": 10.0,
                         "step_duration_s": 5.0})
    with pytest.raises(ValueError, match=r"shape\.step_rate is None"):
        shapes_mod.validate({**base, "rate_profile": "staircase", "step_duration_s": 5.0})
    with pytest.raises(ValueError, match=r"shape\.spike_start_s is None"):
        shapes_mod.validate({**base, "rate_profile": "spike", "spike_rate": 100.0,
                             "spike_duration_s": 5.0})
    with pytest.raises(ValueError, match=r"shape\.rate_profile is 'ramp'"):
        shapes_mod.validate({**base, "rate_profile": "ramp"})
