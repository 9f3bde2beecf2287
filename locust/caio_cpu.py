"""Load-generator CPU as pure code (no locust or gevent import: tests load this by path).

A Locust worker is one gevent process: it can use one core. When it is near 100% of that
core it sends late and times late, so its numbers describe the generator, not the target.
A worker samples ``(time.time(), time.process_time())`` now and then; these functions turn
the samples into CPU % of one core per window and a saturation verdict for the run, and
``CpuBuffer`` keeps the per-window rows and writes them beside the raw records as
``<output_uri>/workers/worker-<id>-<seq:06d>.csv`` (``ts,worker,cpu_percent``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import caio_load

CPU_HEADER = ("ts", "worker", "cpu_percent")

SATURATED_PERCENT = 90.0
MAX_SATURATED_SHARE = 0.10


def cpu_percent(samples: Sequence[tuple[float, float]]) -> list[float]:
    """CPU % of one core in each window between successive ``(wall_s, cpu_s)`` samples
    (100 = one core busy the whole window); windows of zero or negative wall time (a
    repeated or out-of-order sample) are skipped."""
    out = []
    for (wall0, cpu0), (wall1, cpu1) in itertools.pairwise(samples):
        if wall1 <= wall0:
            continue
        if cpu1 < cpu0:
            raise ValueError(f"process CPU time went back from {cpu0} s to {cpu1} s; samples "
                             "must come from one process, in order")
        out.append(100.0 * (cpu1 - cpu0) / (wall1 - wall0))
    return out


@dataclass(frozen=True)
class Saturation:
    """``saturated``: more than ``max_share`` of the windows were at or above ``threshold``
    % of a core; ``share`` is that fraction, ``peak`` and ``mean`` the CPU % seen."""

    saturated: bool
    share: float
    peak: float
    mean: float
    threshold: float
    max_share: float


def saturation(percents: Sequence[float], *, threshold: float = SATURATED_PERCENT,
               max_share: float = MAX_SATURATED_SHARE) -> Saturation:
    """The verdict for one worker's per-window CPU % (no windows: not saturated)."""
    if not percents:
        return Saturation(False, 0.0, 0.0, 0.0, threshold, max_share)
    share = sum(1 for p in percents if p >= threshold) / len(percents)
    return Saturation(share > max_share, share, max(percents),
                      sum(percents) / len(percents), threshold, max_share)


class CpuBuffer(caio_load.CsvChunks):
    """One worker's CPU windows held in memory and written as one CSV file per flush.

    ``sample(wall_s, cpu_s)`` takes ``(time.time(), time.process_time())``; each sample after
    the first adds the row ``ts,worker,cpu_percent`` for the window that ends there (``ts``
    = the window's start, so harvest bins it with the requests started then). Files are
    ``<output_uri>/workers/worker-<id>-<seq:06d>.csv``, each whole; a failed write keeps
    its rows for the next flush.
    """

    folder = "workers"
    header = CPU_HEADER

    def __init__(self, output_uri: str, worker: str):
        super().__init__(output_uri, worker)
        self.last: tuple[float, float] | None = None

    def sample(self, wall_s: float, cpu_s: float) -> float | None:
        """Record a sample; return the CPU % of the window it closes (None for the first
        sample or a window of no wall time)."""
        previous, self.last = self.last, (wall_s, cpu_s)
        if previous is None:
            return None
        percents = cpu_percent([previous, (wall_s, cpu_s)])
        if not percents:
            return None
        self.rows.append((f"{previous[0]:.3f}", self.worker, f"{percents[0]:.1f}"))
        return percents[0]
