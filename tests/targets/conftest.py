"""Fixtures for the deploy-target tests: a tiny real SavedModel and a real local server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from targets_helpers import HERE, MAX_BODY_BYTES, python_env, server_processes


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny two-signature SavedModel, built once in a subprocess (no TF in pytest)."""
    out = tmp_path_factory.mktemp("models") / "tiny" / "3"
    done = subprocess.run([sys.executable, str(HERE / "tiny_model.py"), str(out)],
                          env=python_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """A deployed 2-replica local server for the tiny model (the whole module shares it)."""
    from caio_operators.targets.local import LocalTarget

    target = LocalTarget()
    deployment = target.deploy(
        model_uri=str(tiny_model_dir), model_name="tiny", model_version="3", replicas=2,
        server_dir=str(tmp_path_factory.mktemp("server")), max_body_bytes=MAX_BODY_BYTES,
        max_lifetime_s=600, startup_timeout_s=240)
    yield deployment
    target.undeploy(deployment)
    assert not server_processes(deployment["pid"])
