"""Fixtures for the fault and bad-input tests: the tiny model exported once, for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from faults_helpers import IMAGES, env_with_plugins

EXPORT = """
import sys
from caio_operators.model.export import export_serving_model
export_serving_model("builtin:tiny", sys.argv[1], test_images_uri=sys.argv[2])
"""


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """``builtin:tiny`` exported by the project's own export, in a subprocess (no TF here)."""
    out = tmp_path_factory.mktemp("export") / "tiny"
    done = subprocess.run([sys.executable, "-c", EXPORT, str(out), str(IMAGES)],
                          env=env_with_plugins(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out
