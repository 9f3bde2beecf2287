"""Helpers shared by the deploy-target tests (imported by name: tests/targets is on sys.path)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import psutil
from caio_testing import INSTALLED

HERE = Path(__file__).resolve().parent
PLUGINS = HERE.parents[1] / "plugins"
SERVER_MODULE = "caio_operators.targets.local_server"
MAX_BODY_BYTES = 3 * 2**20


def solid_image(color: tuple[int, int, int], fmt: str = "JPEG", size=(64, 48)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def server_processes(pid: int) -> list[psutil.Process]:
    """Live processes of the server whose supervisor is ``pid`` (it and its group)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if SERVER_MODULE not in (proc.info["cmdline"] or []):
            continue
        try:
            if proc.pid == pid or os.getpgid(proc.pid) == pid:
                found.append(proc)
        except OSError:
            continue
    return found


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    if not INSTALLED:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PLUGINS), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env
