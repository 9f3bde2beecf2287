"""The local server's replica pool under the autoscaler: start, drain and stop replicas.

The supervisor calls :meth:`ScalingController.tick` once a second with the time and each
ready replica's CPU%. The controller feeds the :mod:`autoscaler` and moves the pool
towards its target through a narrow port (:class:`Pool`, the supervisor):

- scale-out: start a replica process; it gets connections only once its ``/healthz``
  answers (loading the model takes seconds);
- scale-in: drain the newest ready replica (a starting one is simply stopped): the
  balancer places no new connection on it, and the replica answers every further request
  with ``Connection: close``; once it holds no connection (its "closed" reports counted
  them down), or after ``drain_timeout_s``, it is sent SIGTERM and flushes its records.
  No request is dropped: a client's next request on a closed connection opens a new one,
  which goes to another replica.

Every change is one row of the scaling records (``SCALING_COLUMNS``): ``event`` is
``target`` (the autoscaler's target count changed) or ``ready`` (the count of ready
replicas changed: one came up, drained and stopped, or died), with the counts before and
after and the reason. A fixed-size server writes its start rows only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from caio_operators.targets import autoscaler

log = logging.getLogger("caio_operators.targets.local_server")

SCALING_DIR = "scaling"  # under the server directory: <run>/server/scaling/*.csv
# On a replica's channel, without a descriptor (one byte each: the channel's messages are):
DRAIN_MESSAGE = b"D"  # it is scaled in: close every connection after its next answer
SHED_MESSAGE = b"S"  # close one connection after its next answer (a replica joined)
SCALING_COLUMNS = ("ts", "event", "from_replicas", "to_replicas", "reason")
TARGET_EVENT, READY_EVENT = "target", "ready"
DEFAULT_DRAIN_TIMEOUT_S = 30.0
STARTING, SERVING, DRAINING, STOPPING, GONE = (
    "starting", "serving", "draining", "stopping", "gone")


class Pool(Protocol):
    """What the controller needs from the supervisor; indexes are replica indexes."""

    def start_replica(self) -> int: ...
    def replica_healthy(self, index: int) -> bool: ...
    def replica_exit_code(self, index: int) -> int | None: ...
    def open_connections(self, index: int) -> int: ...
    def set_accepting(self, index: int, accepting: bool) -> None: ...
    def terminate_replica(self, index: int) -> None: ...


class Recorder(Protocol):
    def add(self, row: tuple) -> None: ...


@dataclass
class _Member:
    state: str
    since: float  # when it entered this state (time.time())
    terminated: bool = False  # SIGTERM sent (a drained replica: it exits on a later tick)


@dataclass
class ScalingController:
    pool: Pool
    recorder: Recorder
    policy: autoscaler.Policy | None  # None: a fixed pool (only its start is recorded)
    threads_per_replica: int = 1  # CPU% / threads = utilisation of a replica's share
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    members: dict[int, _Member] = field(default_factory=dict)
    state: autoscaler.State | None = None

    # what the supervisor tells it ------------------------------------------------------

    def started(self, now: float, indexes: list[int]) -> None:
        """The first replicas all serve (the server is ready)."""
        for index in indexes:
            self.members[index] = _Member(SERVING, now)
        count = len(indexes)
        if self.policy is not None:
            self.state = autoscaler.start(self.policy, count)
        self._record(now, TARGET_EVENT, 0, count, "start")
        self._record(now, READY_EVENT, 0, count, "start: every replica serves")

    def serving(self) -> list[int]:
        return [i for i, m in self.members.items() if m.state == SERVING]

    def tick(self, now: float, cpu_percent: dict[int, float]) -> None:
        """One observation: ``cpu_percent`` of the replicas sampled this second."""
        self._follow_members(now)
        if self.policy is None or self.state is None:
            return
        ready = self.serving()
        shares = [cpu_percent[i] / self.threads_per_replica for i in ready if i in cpu_percent]
        if not shares:
            return
        utilisation = sum(shares) / len(shares)
        decision = autoscaler.step(self.policy, self.state, now, utilisation, len(ready))
        if decision.changed:
            self._record(now, TARGET_EVENT, self.state.target, decision.target, decision.reason)
            log.info("autoscaler: target %d -> %d replicas (%s)", self.state.target,
                     decision.target, decision.reason)
        self.state = decision.state
        self._reconcile(now, decision.state.target)

    # moving the pool ---------------------------------------------------------------------

    def _reconcile(self, now: float, target: int) -> None:
        active = [i for i, m in self.members.items() if m.state in (STARTING, SERVING)]
        while len(active) < target:
            index = self.pool.start_replica()
            self.members[index] = _Member(STARTING, now)
            active.append(index)
            log.info("scale-out: started replica %d", index)
        # a starting replica goes first (it serves nothing), then the newest ready one
        by_preference = sorted(active, key=lambda i: (self.members[i].state != STARTING, -i))
        for index in by_preference[:max(0, len(active) - target)]:
            member = self.members[index]
            if member.state == STARTING:
                self.pool.terminate_replica(index)
                self.members[index] = _Member(STOPPING, now)
                log.info("scale-in: stopped replica %d before it was ready", index)
            else:
                self.pool.set_accepting(index, False)
                self.members[index] = _Member(DRAINING, now)
                log.info("scale-in: draining replica %d (%d open connection(s))",
                         index, self.pool.open_connections(index))

    def _follow_members(self, now: float) -> None:
        for index, member in list(self.members.items()):
            if member.state == GONE:
                continue
            code = self.pool.replica_exit_code(index)
            if code is not None:
                was_ready = member.state in (SERVING, DRAINING)
                self.members[index] = _Member(GONE, now)
                if member.state == STARTING:
                    log.error("replica %d exited with status %d while starting", index, code)
                if was_ready:
                    n = self._ready_count()
                    why = (f"replica {index} drained and stopped" if member.state == DRAINING
                           else f"replica {index} exited with status {code}")
                    self._record(now, READY_EVENT, n + 1, n, why)
                continue
            if member.state == STARTING and self.pool.replica_healthy(index):
                n = self._ready_count()
                self.pool.set_accepting(index, True)
                self.members[index] = _Member(SERVING, now)
                self._record(now, READY_EVENT, n, n + 1,
                             f"replica {index} ready {now - member.since:.1f} s after its start")
            elif member.state == DRAINING and not member.terminated:
                open_now = self.pool.open_connections(index)
                timed_out = now - member.since >= self.drain_timeout_s
                if open_now == 0 or timed_out:
                    if timed_out and open_now:
                        log.warning("replica %d still holds %d connection(s) after %.0f s of "
                                    "draining; stopping it", index, open_now,
                                    self.drain_timeout_s)
                    # still counted as ready until it has exited (it may finish a request)
                    self.pool.terminate_replica(index)
                    member.terminated = True

    def _ready_count(self) -> int:
        return sum(m.state in (SERVING, DRAINING) for m in self.members.values())

    def _record(self, now: float, event: str, before: int, after: int, reason: str) -> None:
        self.recorder.add((f"{now:.6f}", event, before, after, reason))


@dataclass(frozen=True)
class AutoscalingConfig:
    """How a local server autoscales (``LocalTarget.deploy``); its command-line options."""

    min_replicas: int
    max_replicas: int
    target_pct: float = 60.0
    up_window_s: float = autoscaler.DEFAULT_UP_WINDOW_S
    down_window_s: float = autoscaler.DEFAULT_DOWN_WINDOW_S
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S

    def argv(self) -> list[str]:
        return ["--min-replicas", str(self.min_replicas),
                "--max-replicas", str(self.max_replicas),
                "--autoscaling-target", repr(float(self.target_pct)),
                "--scale-up-window-s", repr(float(self.up_window_s)),
                "--scale-down-window-s", repr(float(self.down_window_s)),
                "--drain-timeout-s", repr(float(self.drain_timeout_s))]
