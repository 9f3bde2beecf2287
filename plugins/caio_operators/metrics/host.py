"""Was the machine shared while a run loaded it? Whole-host CPU and other runs' loads.

Question: did anything besides this run take a material share of the machine during its
load window? A second benchmark, an export, a compile on the same host slows both, and
the figures then describe the crowd, not the model.

Rule: the run is *degraded* when processes other than its own (its Locust master and
workers, its local model server, the task itself) used more than
:data:`OTHER_CPU_LIMIT_PCT` (10% of a core) on average over the load window, or when the
load window of another caio run on the same host overlapped this one's.

How: :class:`HostWatch` runs inside the local launcher. Every second it reads the host's
busy CPU time (``/proc/stat`` through psutil: every process, not only ours) and the CPU
time of our process trees; the difference is the others' share. Each load also leaves a
small file in a per-user folder of the host's temp dir while it runs (:class:`LoadRegistry`),
so two loads find each other whichever Airflow, DAG or warehouse started them. The launcher
writes the figures to ``<run>/load/host.json``; harvest applies the rule
(:func:`host_problems`), so a cloud run whose Locust ran here is judged the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: other processes' mean CPU (% of one core) above which a run is degraded
OTHER_CPU_LIMIT_PCT = 10.0
HOST_FILE = "host.json"
#: registry entries older than this are removed (loads killed without a chance to finish)
_STALE_S = 7 * 86400


# ------------------------------------------------------------------ pure rule

def host_figures(intervals: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """Mean CPU (% of one core) of the whole host, of our processes and of the others over
    ``intervals`` of ``(wall seconds, host busy CPU-seconds, our CPU-seconds)``."""
    wall = sum(i[0] for i in intervals)
    if wall <= 0:
        return {"host_cpu_pct": None, "own_cpu_pct": None, "host_other_cpu_pct": None,
                "seconds": 0.0}
    host = sum(i[1] for i in intervals)
    # an interval where ours exceeds the host's count (clock skew between the two reads)
    # lends the others nothing
    other = sum(max(0.0, i[1] - i[2]) for i in intervals)
    return {"host_cpu_pct": 100.0 * host / wall,
            "own_cpu_pct": 100.0 * (host - other) / wall,
            "host_other_cpu_pct": 100.0 * other / wall, "seconds": wall}


def overlaps(window: tuple[float, float], entries: Iterable[Mapping[str, Any]],
             run_id: str) -> list[dict[str, Any]]:
    """The entries of other runs whose load window intersects ``window`` (an entry still
    running has no end)."""
    start, end = window
    found = []
    for entry in entries:
        if entry.get("run_id") == run_id:
            continue
        other_end = entry.get("ended_at")
        if entry["started_at"] < end and (other_end is None or other_end > start):
            found.append(dict(entry))
    return found


def host_problems(host: Mapping[str, Any] | None) -> list[str]:
    """Why a run shared its machine (the rule in the module doc); empty when it did not."""
    if not host:
        return []
    problems = []
    other = host.get("host_other_cpu_pct")
    if other is not None and other > OTHER_CPU_LIMIT_PCT:
        problems.append(
            f"shared machine: other processes used {other:.0f}% of a core on average during "
            f"the load (limit {OTHER_CPU_LIMIT_PCT:g}%, whole machine "
            f"{host.get('host_cpu_pct') or 0:.0f}%, this run {host.get('own_cpu_pct') or 0:.0f}%"
            f" over {host.get('seconds') or 0:.0f} s)")
    others = host.get("overlapping") or []
    if others:
        names = ", ".join(f"{o['run_id']} (pid {o.get('pid')})" for o in others)
        problems.append(f"shared machine: the load of caio run {names} overlapped this "
                        "one's on this host")
    return problems


# ------------------------------------------------------------------ measurement

class LoadRegistry:
    """One small JSON file per load running (or recently run) on this host."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder else default_registry()

    def _path(self, run_id: str) -> Path:
        return self.folder / f"{run_id}.json"

    def _write(self, entry: Mapping[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.folder / f".{entry['run_id']}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(entry))
        tmp.replace(self._path(entry["run_id"]))

    def start(self, run_id: str, started_at: float) -> None:
        self._prune(started_at)
        self._write({"run_id": run_id, "pid": os.getpid(), "started_at": started_at,
                     "ended_at": None})

    def finish(self, run_id: str, started_at: float, ended_at: float) -> None:
        self._write({"run_id": run_id, "pid": os.getpid(), "started_at": started_at,
                     "ended_at": ended_at})

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.folder.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                entry = json.loads(path.read_text())
                if entry.get("ended_at") is None and not _alive(entry.get("pid")):
                    # its launcher was killed before it could finish: ended by then
                    entry["ended_at"] = path.stat().st_mtime
                out.append(entry)
        return out

    def _prune(self, now: float) -> None:
        for path in self.folder.glob("*.json"):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > _STALE_S:
                    path.unlink()


def default_registry() -> Path:
    """``<temp dir>/caio-bench-<uid>/loads``: one per user and host."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"caio-bench-{uid}" / "loads"


def _alive(pid: Any) -> bool:
    import psutil

    try:
        return psutil.pid_exists(int(pid))
    except (TypeError, ValueError):
        return False


class HostWatch:
    """Samples the host's CPU and ours once a second during a load (``tick`` from the
    launcher's watch loop), registers the load, and gives the figures at the end.

    ``roots``: pids whose process trees are this run's (the launcher's own process, with
    Locust under it, and a local model server); ``clock``: for tests.
    """

    def __init__(self, run_id: str, roots: Sequence[int] = (),
                 registry: LoadRegistry | None = None, every_s: float = 1.0,
                 clock=time.time):
        self.run_id = run_id
        self.roots = [os.getpid(), *[int(p) for p in roots if p]]
        self.registry = registry or LoadRegistry()
        self.every_s = every_s
        self.clock = clock
        self.intervals: list[tuple[float, float, float, float]] = []  # ts, wall, host, ours
        self.started_at: float | None = None
        self._last: tuple[float, float] | None = None  # (ts, host busy)
        self._procs: dict[int, tuple[float, float]] = {}  # pid -> (create time, cpu s)

    def start(self) -> None:
        self.started_at = self.clock()
        with contextlib.suppress(OSError):
            self.registry.start(self.run_id, self.started_at)
        self._last = (self.started_at, _host_busy())
        self._procs = self._snapshot()

    def tick(self, force: bool = False) -> None:
        if self._last is None:
            return
        now = self.clock()
        if now <= self._last[0] or (not force and now - self._last[0] < self.every_s):
            return
        busy, procs = _host_busy(), self._snapshot()
        # a process first seen now started since the last look: all its CPU time is new
        own = sum(cpu - self._procs[pid][1]
                  if pid in self._procs and self._procs[pid][0] == created else cpu
                  for pid, (created, cpu) in procs.items())
        self.intervals.append((now, now - self._last[0], busy - self._last[1], own))
        self._last, self._procs = (now, busy), procs

    def finish(self) -> dict[str, Any]:
        """Stop: the last interval, the registry entry closed, the figures and overlaps."""
        self.tick(force=True)
        ended = self.clock()
        started = self.started_at if self.started_at is not None else ended
        entries: list[dict[str, Any]] = []
        with contextlib.suppress(OSError):
            self.registry.finish(self.run_id, started, ended)
            entries = self.registry.entries()
        return {**host_figures([i[1:] for i in self.intervals]),
                "started_at": started, "ended_at": ended, "cpus": os.cpu_count(),
                "limit_pct": OTHER_CPU_LIMIT_PCT,
                "overlapping": overlaps((started, ended), entries, self.run_id),
                "samples": [list(i) for i in self.intervals]}

    def _snapshot(self) -> dict[int, tuple[float, float]]:
        """pid -> (create time, user + system CPU-seconds) of our process trees."""
        import psutil

        out: dict[int, tuple[float, float]] = {}
        for root in self.roots:
            try:
                top = psutil.Process(root)
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        out[proc.pid] = (proc.create_time(), times.user + times.system)
                except psutil.Error:
                    continue
        return out


def _host_busy() -> float:
    """CPU-seconds the whole host has been busy (all cores, every process)."""
    import psutil

    t = psutil.cpu_times()
    # guest time is already counted in user; waiting and stolen time is not ours to use
    not_busy = ("idle", "iowait", "steal", "guest", "guest_nice")
    return sum(t) - sum(getattr(t, name, 0.0) for name in not_busy)


def read_host(text: str | None) -> dict[str, Any] | None:
    """The launcher's host figures from ``host.json`` text (None when absent or unreadable)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


__all__ = ["HOST_FILE", "OTHER_CPU_LIMIT_PCT", "HostWatch", "LoadRegistry", "host_figures",
           "host_problems", "overlaps", "read_host"]


def host_columns(host: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``runs`` columns of the host figures (nulls and no overlaps without them)."""
    host = host or {}
    return {"host_cpu_pct": host.get("host_cpu_pct"),
            "host_other_cpu_pct": host.get("host_other_cpu_pct"),
            "overlapping_runs": ", ".join(o["run_id"] for o in host.get("overlapping") or [])}


def host_timeseries(run_id: str, host: Mapping[str, Any] | None, interval_s: float = 1.0):
    """``timeseries`` rows of the host samples: ``host_cpu_pct`` and ``host_other_cpu_pct``
    per interval (each sample counted in the interval it ends in)."""
    import pandas as pd

    from caio_operators.results import schema as sc

    samples = (host or {}).get("samples") or []
    rows = []
    for end, wall, busy, own in samples:
        if wall <= 0:
            continue
        ts = (end // interval_s) * interval_s
        rows.append((ts, sc.HOST_CPU_PCT, 100.0 * busy / wall))
        rows.append((ts, sc.HOST_OTHER_CPU_PCT, 100.0 * max(0.0, busy - own) / wall))
    if not rows:
        return sc.empty_frame("timeseries")
    frame = pd.DataFrame(rows, columns=["ts", "metric", "value"])
    frame = frame.groupby(["ts", "metric"], as_index=False)[["value"]].mean()
    frame["ts"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    frame["run_id"], frame["dimension"] = run_id, sc.DIMENSION_ALL
    return sc.conform("timeseries", frame)
