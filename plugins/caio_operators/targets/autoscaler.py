"""Replica autoscaling as a pure state machine (no processes, no clock: the caller owns both).

The question: how many replicas should serve now, given the replicas' mean utilisation?
The local server's supervisor feeds :func:`step` one observation a second (the time, the
mean CPU utilisation of the ready replicas, and how many are ready) and starts or stops
replica processes to reach the returned target.

The rule follows what Vertex AI documents for online prediction:

- autoscaling is on when the maximum replica count is above the minimum, and the count
  stays within [min, max], min at least 1 ("Scale inference nodes", docs/predictions/
  autoscaling: ``maxReplicaCount`` > ``minReplicaCount``);
- the metric is CPU utilisation (or the accelerator duty cycle) against a target
  percentage, 60 by default; "once the real usage deviates from the target by a certain
  percentage, the machine replicas change" (``AutoscalingMetricSpec.target``);
- the desired count brings the mean utilisation back to the target. Vertex does not
  publish its formula; we use the one of Kubernetes' Horizontal Pod Autoscaler, which
  Vertex's description matches: ``ceil(ready * utilisation / target)``, and no change
  while ``|utilisation / target - 1| <= tolerance``;
- scale-up once the desired count has been above the target count for ``up_window_s``
  (to the lowest desired count of that window: what the whole window asked for), and
  scale-down only after a cool-down: the desired count has been below the target count
  for ``down_window_s`` and the last change is at least that old (to the highest desired
  count of that window, so a brief lull does not remove capacity that is needed again).

Vertex's own windows are minutes; the defaults here suit a local run of a few minutes, and
tests pass seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

DEFAULT_UP_WINDOW_S = 10.0
DEFAULT_DOWN_WINDOW_S = 30.0
DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class Policy:
    """The bounds, the utilisation target (percent) and the windows (seconds)."""

    min_replicas: int
    max_replicas: int
    target_pct: float = 60.0
    up_window_s: float = DEFAULT_UP_WINDOW_S
    down_window_s: float = DEFAULT_DOWN_WINDOW_S
    tolerance: float = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        problems = check_policy(self)
        if problems:
            raise ValueError("; ".join(problems))

    def clamp(self, count: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, count))


def check_policy(policy: Policy) -> list[str]:
    """What is wrong with ``policy``, as messages naming the field and the accepted values."""
    problems = []
    if policy.min_replicas < 1:
        problems.append(f"min_replicas={policy.min_replicas}: must be at least 1")
    if policy.max_replicas < policy.min_replicas:
        problems.append(f"max_replicas={policy.max_replicas}: below min_replicas="
                        f"{policy.min_replicas} (accepted: max_replicas >= min_replicas)")
    if not 0 < policy.target_pct <= 100:
        problems.append(f"target_pct={policy.target_pct}: accepted 0 < target <= 100")
    if policy.up_window_s < 0 or policy.down_window_s < 0:
        problems.append(f"up_window_s={policy.up_window_s}, down_window_s="
                        f"{policy.down_window_s}: windows must be 0 s or more")
    if not 0 <= policy.tolerance < 1:
        problems.append(f"tolerance={policy.tolerance}: accepted 0 <= tolerance < 1")
    return problems


@dataclass(frozen=True)
class State:
    """The target count, and since when (and to what) the desired count has stayed above
    or below it."""

    target: int
    last_change_s: float | None = None
    above_since_s: float | None = None
    above_min: int = 0  # lowest desired count while above
    below_since_s: float | None = None
    below_max: int = 0  # highest desired count while below


@dataclass(frozen=True)
class Decision:
    state: State
    desired: int  # what this observation alone asks for
    changed: bool  # the target changed with this observation
    reason: str  # why it changed ("" when it did not)

    @property
    def target(self) -> int:
        return self.state.target


def start(policy: Policy, replicas: int) -> State:
    """The state of a server that starts with ``replicas`` (within the bounds)."""
    if policy.clamp(replicas) != replicas:
        raise ValueError(f"replicas={replicas}: the starting count must be within "
                         f"min_replicas={policy.min_replicas} and max_replicas="
                         f"{policy.max_replicas}")
    return State(target=replicas)


def desired_replicas(policy: Policy, ready: int, utilisation_pct: float) -> int:
    """``ceil(ready * utilisation / target)`` within the bounds; ``ready`` inside the
    tolerance band (and when nothing is ready yet, so nothing was measured)."""
    if ready < 1:
        return policy.clamp(ready)
    ratio = utilisation_pct / policy.target_pct
    if abs(ratio - 1) <= policy.tolerance:
        return policy.clamp(ready)
    # 1e-9: 3 * 40 / 60 is 2.0000000000000004 in floats, which is 2 replicas, not 3
    return policy.clamp(math.ceil(ready * ratio - 1e-9))


def step(policy: Policy, state: State, now_s: float, utilisation_pct: float,
         ready: int) -> Decision:
    """Feed one observation at ``now_s``: the mean utilisation (percent) of the ``ready``
    replicas. Returns the new state and whether the target changed, and why."""
    desired = desired_replicas(policy, ready, utilisation_pct)
    target = state.target
    if desired > target:
        since = state.above_since_s if state.above_since_s is not None else now_s
        lowest = min(state.above_min, desired) if state.above_since_s is not None else desired
        state = replace(state, above_since_s=since, above_min=lowest, below_since_s=None,
                        below_max=0)
        if now_s - since >= policy.up_window_s:
            return _change(state, now_s, desired, lowest,
                           f"utilisation {utilisation_pct:.0f}% of {ready} ready replica(s) "
                           f"above the {policy.target_pct:.0f}% target for "
                           f"{now_s - since:.0f} s")
    elif desired < target:
        since = state.below_since_s if state.below_since_s is not None else now_s
        highest = max(state.below_max, desired)
        state = replace(state, below_since_s=since, below_max=highest, above_since_s=None,
                        above_min=0)
        cooled = state.last_change_s is None or now_s - state.last_change_s >= \
            policy.down_window_s
        if now_s - since >= policy.down_window_s and cooled:
            return _change(state, now_s, desired, highest,
                           f"utilisation {utilisation_pct:.0f}% of {ready} ready replica(s) "
                           f"below the {policy.target_pct:.0f}% target for "
                           f"{now_s - since:.0f} s")
    else:
        state = replace(state, above_since_s=None, above_min=0, below_since_s=None,
                        below_max=0)
    return Decision(state, desired, False, "")


def _change(state: State, now_s: float, desired: int, new_target: int, reason: str) -> Decision:
    return Decision(State(target=new_target, last_change_s=now_s), desired, True, reason)
