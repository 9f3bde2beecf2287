"""Shared fixtures. The package is installed editable by `make test`; plugins/ on sys.path
keeps a bare `pytest` in the venv working too."""

from __future__ import annotations

from pathlib import Path

import pytest
from caio_testing import REPO, our_processes


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
