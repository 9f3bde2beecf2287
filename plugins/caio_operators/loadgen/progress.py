"""Locust's progress in the task log, read while it runs: the last stats row of its
``_stats_history.csv`` (read from the file's tail), and the peak search's judged steps
(``search.json``). Shared by the local and the GKE launcher.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from caio_operators import storage

_TAIL_BYTES = 16384


def parse_progress(history_csv_text: str, window_s: float = 10.0) -> dict[str, float] | None:
    """Progress from Locust's ``_stats_history.csv`` (its header + any tail of rows):
    ``{users, rps, requests, failures}`` of the last whole Aggregated row, or ``None``.

    ``rps`` is measured over the last ``window_s`` seconds between the rows where the total
    changed: a master only learns of requests from the workers' reports every 3 s, so its own
    "current" rate swings between 0 and double.
    """
    lines = history_csv_text.splitlines()
    if len(lines) < 2:
        return None
    header = next(csv.reader([lines[0]]))
    rows = []
    for row in csv.reader(lines[1:]):
        if len(row) != len(header):
            continue  # a line cut by the tail read, or half written
        rec = dict(zip(header, row, strict=True))
        if rec.get("Name") != "Aggregated":
            continue
        try:
            rows.append((float(rec["Timestamp"]), int(float(rec["User Count"])),
                         int(float(rec["Total Request Count"])),
                         int(float(rec["Total Failure Count"])), float(rec["Requests/s"])))
        except (KeyError, ValueError):
            continue
    if not rows:
        return None
    _, users, requests, failures, rps = rows[-1]
    changes = [r for i, r in enumerate(rows) if i and r[2] != rows[i - 1][2]]
    recent = [r for r in changes if r[0] >= changes[-1][0] - window_s] if changes else []
    if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
        rps = (recent[-1][2] - recent[0][2]) / (recent[-1][0] - recent[0][0])
    return {"users": users, "rps": rps, "requests": requests, "failures": failures}


def read_progress(history_csv: str | os.PathLike) -> dict[str, float] | None:
    path = Path(history_csv)
    try:
        with path.open("rb") as handle:
            header = handle.readline()
            size = path.stat().st_size
            handle.seek(max(len(header), size - _TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return None
    return parse_progress((header + b"\n" + tail).decode("utf-8", "replace"))


def format_progress(elapsed_s: float, progress: dict[str, float] | None) -> str:
    if progress is None:
        return f"load: {elapsed_s:.0f} s elapsed, waiting for Locust's first stats"
    total = progress["requests"]
    share = 100.0 * progress["failures"] / total if total else 0.0
    return (f"load: {elapsed_s:.0f} s elapsed, {progress['users']} users, "
            f"{progress['rps']:.1f} req/s, {total} requests, "
            f"{progress['failures']} failures ({share:.1f}%)")


def peak_progress(search_uri: str, seen: int) -> tuple[list[str], int]:
    """Task-log lines for the peak-search steps judged since the first ``seen`` (the master
    rewrites ``search.json`` after every window); returns them and the new count."""
    try:
        search = json.loads(storage.read_text(search_uri))
        steps = search["steps"]
    except (OSError, ValueError, KeyError, TypeError, storage.StorageError):
        return [], seen  # not there yet: next time
    lines = [f"load: peak search step {st['step']} at {st['rate']:.4g} req/s "
             f"{'passed' if st['passed'] else 'FAILED'}: {st['throughput_rps']:.4g} req/s, "
             f"latency {st['latency_ms']:.1f} ms, errors {st['error_rate']:.1%} ({st['reason']})"
             for st in steps[seen:]]
    if search.get("status") not in (None, "running") and len(steps) > seen:
        lines.append(f"load: peak search {search['status']}: {search.get('max_sustainable_rps')}"
                     f" req/s sustained ({search.get('reason')})")
    return lines, len(steps)
