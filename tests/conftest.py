"""Shared fixtures. The package is installed editable by `make test`; plugins/ on sys.path
keeps a bare `pytest` in the venv working too."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Command-line fragments of every process this project starts.
OUR_PROCESSES = ("caio_operators.targets.local_server", "locustfile.py", "caio-serve")


def our_processes() -> list:
    """Live processes started by this project (servers, Locust master/workers)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(marker in cmd for marker in OUR_PROCESSES) and "pytest" not in cmd:
            found.append(proc)
    return found


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return REPO / "test_images"


@pytest.fixture
def bucket(tmp_path) -> str:
    """A fresh file:// bucket."""
    root = tmp_path / "bucket"
    root.mkdir()
    return "file://" + str(root)


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_processes():
    """The whole suite must leave no server or Locust process behind."""
    before = {p.pid for p in our_processes()}
    yield
    import time

    deadline = time.monotonic() + 10
    left = [p for p in our_processes() if p.pid not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = [p for p in our_processes() if p.pid not in before]
    assert not left, f"processes left running after the tests: {[p.cmdline() for p in left]}"
