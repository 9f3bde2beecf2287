"""Shared fixtures. The package is installed editable by `make test`; plugins/ on sys.path
keeps a bare `pytest` in the venv working too."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every process the tests start inherits this mark, so the leak check below finds exactly
# ours, including orphans re-parented to init, and nothing else running on the machine.
SESSION_MARK = "CAIO_TEST_SESSION"
os.environ[SESSION_MARK] = uuid.uuid4().hex

# Command-line fragments of every process this project starts.
OUR_PROCESSES = ("caio_operators.targets.local_server", "locustfile.py", "caio-serve")


def our_processes() -> list:
    """Live servers and Locust processes started by this test session."""
    import psutil

    mark = os.environ[SESSION_MARK]
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if not any(marker in cmd for marker in OUR_PROCESSES):
                continue
            if proc.environ().get(SESSION_MARK) == mark:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
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
    yield
    import time

    deadline = time.monotonic() + 10
    left = our_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = our_processes()
    assert not left, f"processes left running after the tests: {[p.cmdline() for p in left]}"
