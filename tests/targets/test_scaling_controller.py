"""The replica pool under the autoscaler, with a fake pool: what starts, drains and stops
when, and the rows it records."""

from __future__ import annotations

from caio_operators.targets.autoscaler import Policy
from caio_operators.targets.scaling import ScalingController


class FakePool:
    def __init__(self, replicas: int) -> None:
        self.healthy = set(range(replicas))
        self.exited: dict[int, int] = {}
        self.open = dict.fromkeys(range(replicas), 0)
        self.accepting = dict.fromkeys(range(replicas), True)
        self.terminated: list[int] = []
        self.next = replicas

    def start_replica(self) -> int:
        index, self.next = self.next, self.next + 1
        self.open[index], self.accepting[index] = 0, False
        return index

    def replica_healthy(self, index):
        return index in self.healthy

    def replica_exit_code(self, index):
        return self.exited.get(index)

    def open_connections(self, index):
        return self.open[index]

    def set_accepting(self, index, accepting):
        self.accepting[index] = accepting

    def terminate_replica(self, index):
        self.terminated.append(index)


class Rows(list):
    def add(self, row):
        self.append(row)


def test_scale_out_waits_for_health_and_scale_in_drains_before_stopping():
    pool, rows = FakePool(1), Rows()
    controller = ScalingController(pool, rows, Policy(1, 2, 50, up_window_s=1,
                                                      down_window_s=2))
    controller.started(100.0, [0])
    controller.tick(101.0, {0: 90.0})
    controller.tick(102.0, {0: 90.0})  # above for 1 s: target 2, replica 1 starts
    assert pool.next == 2 and pool.accepting[1] is False
    controller.tick(103.0, {0: 90.0})  # still loading: no connections for it
    assert pool.accepting[1] is False
    pool.healthy.add(1)
    controller.tick(104.0, {0: 60.0})
    assert pool.accepting[1] is True and controller.serving() == [0, 1]
    pool.open[1] = 2
    for now in (105.0, 106.0, 107.0):  # idle: below from 105, cool-down 2 s from 105
        controller.tick(now, {0: 1.0, 1: 1.0})
    assert pool.accepting[1] is False and pool.terminated == []  # draining, 2 open
    pool.open[1] = 0
    controller.tick(108.0, {0: 1.0, 1: 1.0})
    assert pool.terminated == [1]
    pool.exited[1] = 0
    controller.tick(109.0, {0: 1.0})
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("target", 0, 1), ("ready", 0, 1), ("target", 1, 2), ("ready", 1, 2),
        ("target", 2, 1), ("ready", 2, 1)]
    assert [float(r[0]) for r in rows] == [100, 100, 102, 104, 107, 109]
    assert rows[3][4] == "replica 1 ready 2.0 s after its start"
    assert rows[5][4] == "replica 1 drained and stopped"


def test_a_fixed_pool_records_its_start_and_a_death_only():
    pool, rows = FakePool(2), Rows()
    controller = ScalingController(pool, rows, None)
    controller.started(10.0, [0, 1])
    controller.tick(11.0, {0: 100.0, 1: 100.0})
    pool.exited[1] = -9
    controller.tick(12.0, {0: 100.0})
    assert pool.next == 2  # nothing started
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("target", 0, 2, "start"), ("ready", 0, 2, "start: every replica serves"),
        ("ready", 2, 1, "replica 1 exited with status -9")]
