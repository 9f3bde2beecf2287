"""One real local deployment per session (``caio_operators.localairflow``, what ``make
airflow`` starts) on free ports in a temporary home: PostgreSQL, api-server, scheduler with
the LocalExecutor, dag-processor, triggerer."""

from __future__ import annotations

import warnings

import pytest
from browser import Browser
from caio_testing import REPO
from scheduler_helpers import QUICK, Api, wait_until

from caio_operators.localairflow import LocalAirflow, free_port, marked_processes

DAGS = ("caio_load_test", "caio_reports", "caio_version_sweep")


@pytest.fixture(scope="session")
def api(tmp_path_factory) -> Api:
    root = tmp_path_factory.mktemp("deployment")
    deployment = LocalAirflow(home=root / "airflow", dags_folder=REPO / "dags",
                              caio_home=root / "caio", api_port=free_port(), db_port=free_port())
    deployment.start()  # stops what it started if it fails
    try:
        client = Api(deployment)
        wait_until(lambda: _parsed(client), 180,
                   lambda: f"DAGs parsed: {[d['dag_id'] for d in client.get('/dags')['dags']]}")
        yield client
    finally:
        stopped = deployment.stop()
        if any("killed" in what for what in stopped):  # shown in the warnings summary
            warnings.warn(f"the deployment's stop needed kills: {stopped}", stacklevel=1)
        left = marked_processes(deployment.home)
        assert not left, f"left running after make airflow-stop: {[p.cmdline() for p in left]}"


def _parsed(client: Api) -> bool:
    return set(DAGS) <= {d["dag_id"] for d in client.get("/dags")["dags"]}


@pytest.fixture(scope="session")
def today_taken(api) -> None:
    """Unpausing caio_load_test starts today's scheduled run with the default params
    (ResNet101 for 80 s: minutes of this tier's time). The scheduler never creates a second
    run of a date, so a run of today's date takes its place (docs/scheduling.md's "unless a run of
    that date exists already"): marked failed while the DAG is paused, none of its tasks
    ever runs (they end skipped)."""
    dag = api.get("/dags/caio_load_test")
    if not dag["is_paused"]:
        return
    run_id = "placeholder-for-today"
    api.call("POST", "/dags/caio_load_test/dagRuns",
             {"dag_run_id": run_id, "logical_date": dag["next_dagrun_logical_date"], "conf": {}})
    api.call("PATCH", f"/dags/caio_load_test/dagRuns/{run_id}", {"state": "failed"})


@pytest.fixture(scope="session")
def triggered(api, today_taken) -> dict:
    """One caio_load_test run triggered through the REST API with a conf, ended (shared by
    the modules that look at a finished run: one run of this tier's time)."""
    api.unpause("caio_load_test")  # the Trigger form's "unpause" box
    run_id = api.trigger("caio_load_test", {"model_name": "sched", "model_version": "t1", **QUICK})
    return api.wait_run("caio_load_test", run_id)


@pytest.fixture
def browser(request, tmp_path):
    """Headless Chromium for one test; the test module's ``BROWSER_HEIGHT`` sets its window
    (tall enough for what the test's screenshot should show)."""
    browser = Browser(tmp_path / "chromium", height=getattr(request.module, "BROWSER_HEIGHT",
                                                                1100))
    try:
        yield browser
    finally:
        browser.close()
