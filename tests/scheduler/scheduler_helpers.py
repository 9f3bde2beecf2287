"""The REST API and CLI of a test deployment, and waits on its state (conftest.py holds only
fixtures)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from caio_operators.localairflow import LocalAirflow, api_json, token

DONE = ("success", "failed")
#: Every caio_load_test run of this tier: the tiny model, one replica, a short constant load.
QUICK = {"model_source": "builtin:tiny", "load_shape": "constant", "users": 2,
         "duration_s": 5, "replicas": 1}


class Api:
    """The deployment's REST API (``/api/v2``), logged in as its admin."""

    def __init__(self, deployment: LocalAirflow):
        self.deployment = deployment
        self.token = token(deployment)

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        url = f"{self.deployment.url}/api/v2{path}"
        if params:
            url += "?" + urlencode(params, doseq=True)
        try:
            return api_json(url, method=method, body=body, token=self.token)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path} -> {exc.code}: {exc.read()[:2000]!r}") from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, **params)

    def page(self, path: str) -> str:
        """An HTML page of the deployment (``path`` from its root), as the logged-in admin."""
        request = urllib.request.Request(f"{self.deployment.url}{path}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.read().decode()

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/dags/{dag_id}/dagRuns/{quote(run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances",
                        limit=100)["task_instances"]

    def trigger(self, dag_id: str, conf: dict, logical_date: str | None = None) -> str:
        """What the Trigger form sends; returns the Airflow run id."""
        return self.call("POST", f"/dags/{dag_id}/dagRuns",
                         {"logical_date": logical_date, "conf": conf})["dag_run_id"]

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float = 300) -> dict:
        """The run once it has ended; its tasks' states in the failure message otherwise."""
        return wait_until(lambda: _done(self.run(dag_id, run_id)), timeout_s,
                          lambda: f"{dag_id} {run_id} not done: "
                                  f"{states(self.task_instances(dag_id, run_id))}")

    def wait_backfills_done(self, dag_id: str, timeout_s: float = 600) -> None:
        def active() -> list[dict]:
            return [b for b in self.get("/backfills", dag_id=dag_id)["backfills"]
                    if b["completed_at"] is None]
        wait_until(lambda: not active(), timeout_s, lambda: f"backfills still active: {active()}")

    def cli(self, *args: str) -> str:
        """An ``airflow`` command as a user types it, with the deployment's AIRFLOW_HOME."""
        proc = subprocess.run([airflow_bin(), *args], env=self.deployment.env(),
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, f"airflow {shlex.join(args)}:\n{proc.stdout}{proc.stderr}"
        return proc.stdout


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def _done(run: dict) -> dict | None:
    return run if run["state"] in DONE else None


def states(tis: list[dict]) -> dict[str, str | None]:
    """{task_id or task_id[map index]: state}."""
    return {f"{t['task_id']}[{t['map_index']}]" if t["map_index"] >= 0 else t["task_id"]:
            t["state"] for t in tis}


def wait_until(check, timeout_s: float, describe, interval_s: float = 1.0):
    """Poll ``check`` until it returns something truthy; fail with ``describe()`` after
    ``timeout_s`` (a bound on a stuck deployment, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:g} s: {describe()}")
        time.sleep(interval_s)


def query(deployment: LocalAirflow, sql: str, params: Any = None) -> list[tuple]:
    from caio_operators.results.warehouse import open_warehouse

    warehouse = open_warehouse(f"duckdb://{deployment.caio_home / 'warehouse.duckdb'}")
    return list(warehouse.query(sql, params).itertuples(index=False, name=None))


def iso(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()
