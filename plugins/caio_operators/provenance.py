"""Provenance stamped on every run: what produced these numbers, on what."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import caio_operators
from caio_operators.metrics import gpu

_PACKAGES = ("apache-airflow", "locust", "tensorflow", "tensorflow-hub", "pandas", "duckdb")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_sha() -> str | None:
    """The commit of the checkout the package runs from, or $CAIO_GIT_SHA, or None."""
    if os.environ.get("CAIO_GIT_SHA"):
        return os.environ["CAIO_GIT_SHA"]
    here = Path(caio_operators.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    if out.returncode != 0 or not sha:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=5, check=False,
    ).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def collect() -> dict:
    """Versions, machine, GPUs (model and driver from NVML; empty without) and git sha as a
    JSON-able dict (no imports of the packages but NVML's bindings)."""
    return {
        "caio_operators": caio_operators.__version__,
        "packages": {name: _version(name) for name in _PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "git_sha": git_sha(),
        "gpus": gpu.inventory(),
    }
