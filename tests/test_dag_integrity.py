"""DAG integrity: every DAG file imports cleanly, fast, without heavy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from caio_testing import dag_bag

REPO = Path(__file__).resolve().parents[1]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))


@pytest.fixture(scope="module")
def dagbag():
    return dag_bag(REPO / "dags")


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "caio_load_test" in dagbag.dags


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_parses_fast_without_heavy_imports(dag_file):
    """Parse each file in a fresh interpreter: time it and list what it imported."""
    probe = (
        "import sys, time, runpy\n"
        "import airflow.sdk\n"
        "before = set(sys.modules)\n"
        "t = time.perf_counter()\n"
        f"runpy.run_path({str(dag_file)!r})\n"
        "print('seconds=%f' % (time.perf_counter() - t))\n"
        "new = set(sys.modules) - before\n"
        "heavy = [m for m in ('tensorflow', 'locust', 'gevent', 'pandas', 'duckdb', "
        "'matplotlib', 'google.cloud.aiplatform') if m in new]\n"
        "print('heavy=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=REPO, timeout=120, check=True)
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    seconds, heavy = lines["seconds"], lines["heavy"]
    assert float(seconds) < 1.0, f"{dag_file.name} took {seconds}s to parse"
    assert heavy == "", f"{dag_file.name} imports {heavy} at parse time"


def test_load_test_dag_shape(dagbag):
    dag = dagbag.dags["caio_load_test"]
    assert dag.catchup is False and dag.tags
    assert dag.doc_md
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {"validate", "export", "deploy", "prepare_metrics", "choose_load",
                          "load", "load_gke", "undeploy", "harvest", "analyse"}
    assert tasks["deploy"].is_setup and tasks["undeploy"].is_teardown
    # what loads this machine waits in the host pool; a GKE load and cloud deploys do not
    pools = {name: task.pool for name, task in tasks.items()}
    assert {n for n, p in pools.items() if p == "caio_host"} == {"export", "load"}
    assert tasks["choose_load"].downstream_task_ids == {"load", "load_gke"}
    assert {"load", "load_gke"} <= tasks["undeploy"].upstream_task_ids
    assert tasks["harvest"].trigger_rule == "all_done"
    assert "undeploy" in tasks["harvest"].upstream_task_ids
    # Every knob is a Param with a description for the Trigger form.
    for name, param in dag.params.items():
        assert param.description, f"param {name} has no description"
        assert param.schema.get("type"), f"param {name} has no type"
