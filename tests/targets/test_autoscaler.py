"""The autoscaler's rule, with literal numbers: desired count, scale-up window, cool-down."""

from __future__ import annotations

import pytest

from caio_operators.targets.autoscaler import Policy, desired_replicas, start, step

POLICY = Policy(min_replicas=1, max_replicas=3, target_pct=60, up_window_s=3,
                down_window_s=5)


def run(policy, state, observations):
    """Feed (now_s, utilisation, ready) triples; the targets after each."""
    targets = []
    for now, util, ready in observations:
        decision = step(policy, state, now, util, ready)
        state = decision.state
        targets.append(decision.target)
    return state, targets


def test_desired_count_brings_utilisation_to_target():
    assert desired_replicas(POLICY, 1, 100) == 2  # ceil(1 * 100 / 60)
    assert desired_replicas(POLICY, 2, 90) == 3  # ceil(2 * 1.5)
    assert desired_replicas(POLICY, 3, 100) == 3  # capped at max_replicas
    assert desired_replicas(POLICY, 3, 40) == 2  # exactly 2.0, not 3
    assert desired_replicas(POLICY, 3, 5) == 1  # floored at min_replicas
    assert desired_replicas(POLICY, 2, 65) == 2  # within the 10% tolerance: no change
    assert desired_replicas(POLICY, 2, 54) == 2
    assert desired_replicas(POLICY, 2, 53) == 2  # ceil(1.77): outside tolerance, still 2


def test_scale_up_only_after_the_window():
    state = start(POLICY, 1)
    state, targets = run(POLICY, state, [(0, 100, 1), (1, 100, 1), (2, 100, 1),
                                         (3, 100, 1), (4, 100, 1)])
    assert targets == [1, 1, 1, 2, 2]  # above from t=0, window 3 s: up at t=3
    assert state.last_change_s == 3


def test_a_short_burst_does_not_scale_up():
    state = start(POLICY, 1)
    _, targets = run(POLICY, state, [(0, 100, 1), (1, 100, 1), (2, 30, 1), (3, 100, 1),
                                     (4, 100, 1), (5, 100, 1)])
    assert targets == [1, 1, 1, 1, 1, 1]  # the dip at t=2 restarts the window


def test_scale_up_goes_to_the_lowest_count_the_window_asked_for():
    state = start(POLICY, 1)
    # ready 2 (a second replica was already up): 90% asks 3, 70% asks 3, 65% is in band
    _, targets = run(POLICY, state, [(0, 100, 1), (1, 100, 2), (2, 100, 2), (3, 100, 2)])
    assert targets == [1, 1, 1, 2]  # asked 2, 4->3, 3, 3: the lowest is 2


def test_scale_down_waits_for_the_cool_down_after_the_last_change():
    state = start(POLICY, 1)
    state, targets = run(POLICY, state, [(t, 100, 1) for t in range(4)])
    assert targets[-1] == 2  # up at t=3
    # idle from t=4: below from t=4, but the cool-down counts from the change at t=3
    state, targets = run(POLICY, state, [(t, 5, 2) for t in range(4, 11)])
    assert targets == [2, 2, 2, 2, 2, 1, 1]  # below since 4, window 5 s: down at t=9
    assert state.last_change_s == 9


def test_scale_down_keeps_the_highest_count_of_the_window():
    policy = Policy(min_replicas=1, max_replicas=3, target_pct=60, up_window_s=0,
                    down_window_s=2)
    state = start(policy, 3)
    # 3 ready: 30% asks 2, 10% asks 1, 15% asks 1
    _, targets = run(policy, state, [(0, 30, 3), (1, 10, 3), (2, 15, 3)])
    assert targets == [3, 3, 2]


def test_bounds_are_checked_with_clear_messages():
    with pytest.raises(ValueError, match="max_replicas=1: below min_replicas=2"):
        Policy(min_replicas=2, max_replicas=1)
    with pytest.raises(ValueError, match="target_pct=0"):
        Policy(min_replicas=1, max_replicas=2, target_pct=0)
    with pytest.raises(ValueError, match="replicas=4: the starting count must be within"):
        start(POLICY, 4)
