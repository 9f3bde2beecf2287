"""Helpers for the fault and bad-input tests (tests/faults is on sys.path under pytest).

A run here is the DAG's own stages (`caio_operators.pipeline`) called in order on the local
target with real processes: the model server replicas, Locust master and workers, real
files and DuckDB. Faults are injected from the test while the load runs in a thread.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from caio_testing import REPO

from caio_operators import pipeline, storage
from caio_operators.spec import RunSpec, param_schema, validate_params

IMAGES = REPO / "test_images"
LOG = logging.getLogger("faults")


def make_spec(root: Path, **params: Any) -> RunSpec:
    """A validated local RunSpec with its bucket and warehouse under ``root``; the tiny
    model, a short constant load."""
    defaults = {
        "model_name": "tiny", "model_version": "faults", "model_source": "builtin:tiny",
        "replicas": 1, "workers": 1, "load_shape": "constant", "users": 2,
        "duration_s": 8, "bucket": f"file://{root}/bucket",
        "warehouse": f"duckdb://{root}/warehouse.duckdb",
    }
    schema = param_schema(root / "home", IMAGES)
    return validate_params({**defaults, **params}, schema, dag_id="caio_load_test",
                           airflow_run_id=f"faults__{uuid.uuid4().hex[:12]}")


def place_model(spec: RunSpec, exported: Path) -> None:
    """Put the session's exported tiny model where the run's export would have written it."""
    shutil.copytree(exported, storage.local_path(spec.model_uri), dirs_exist_ok=True)


def wait_until(predicate: Callable[[], Any], timeout_s: float, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    return predicate()


class LoadInBackground:
    """``pipeline.run_load`` in a thread; ``launcher`` is the LocalLauncher once started."""

    def __init__(self, spec: RunSpec, deployment: dict[str, Any]):
        self.launcher = None
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(spec, deployment), daemon=True)

    def _run(self, spec, deployment) -> None:
        try:
            self.result = pipeline.run_load(spec, deployment, log=LOG,
                                            on_launcher=self._remember)
        except BaseException as exc:
            self.error = exc

    def _remember(self, launcher) -> None:
        self.launcher = launcher

    def __enter__(self) -> LoadInBackground:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive() and self.launcher is not None:
            self.launcher.stop()
        self._thread.join(timeout=180)

    def join(self, timeout_s: float = 180) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the load did not end"


def client_records(spec: RunSpec) -> list[dict[str, str]]:
    """Every raw client record in the run's bucket, with the file it came from."""
    rows = []
    for uri in storage.list_files(spec.layout.client_requests_dir, ".csv"):
        path = storage.local_path(uri)
        with path.open(newline="") as handle:
            rows += [{**row, "file": path.name} for row in csv.DictReader(handle)]
    return rows


def flushed_files(spec: RunSpec) -> list[Path]:
    return [storage.local_path(u)
            for u in storage.list_files(spec.layout.client_requests_dir, ".csv")]


def query(spec: RunSpec, sql: str, *params: Any) -> list[tuple]:
    import duckdb

    path = spec.warehouse.removeprefix("duckdb://")
    with duckdb.connect(path, read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def env_with_plugins() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "plugins"), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env
