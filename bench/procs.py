"""What the benchmarks share: child processes (free ports, pinning to a core, waiting,
stopping) and their results (the JSON written whole, the target lines printed)."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the responder exited with code {proc.returncode} before "
                               f"listening on 127.0.0.1:{port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


def pin(proc: subprocess.Popen, core: int) -> None:
    # Set right after the start, before the child creates any thread (threads inherit it).
    os.sched_setaffinity(proc.pid, {core})


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_listening(argv: Sequence[str], log_path: Path, port: int, core: int
                    ) -> subprocess.Popen:
    """Start a server pinned to ``core`` (output to ``log_path``) and return once it listens
    on ``port``; stopped again if it never does."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT)
    pin(proc, core)
    try:
        wait_listening(port, proc)
    except Exception:
        stop(proc)
        raise
    return proc


def write_result(out: Path, result: dict[str, Any]) -> None:
    """The benchmark's JSON, written whole (temp file + rename; timestamps as text)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp_out, out)


def target_lines(targets: Iterable[dict[str, Any]]) -> list[str]:
    """``target <name>: <value> -> met | NOT MET`` per target."""
    return [f"target {t['name']}: {t['value']:g} -> {'met' if t['met'] else 'NOT MET'}"
            for t in targets]


def spread(values: Iterable[float | None], digits: int = 1) -> dict[str, float] | None:
    """``{"min", "median", "max", "n"}`` of a benchmark's rounds (``None`` rounds left
    out; ``None`` when there is none). Verdicts are taken on the median: one disturbed round
    (other work on the machine) moves it less than it moves a best or a mean."""
    got = sorted(v for v in values if v is not None)
    if not got:
        return None
    return {"min": round(got[0], digits), "median": round(statistics.median(got), digits),
            "max": round(got[-1], digits), "n": len(got)}


def spread_text(s: dict[str, float] | None, fmt: str = "{:,.0f}") -> str:
    """``median (min-max)``, or ``-``."""
    if not s:
        return "-"
    if s["n"] == 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"
