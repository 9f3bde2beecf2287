"""Sweeps and scheduled runs: variant planning, run keys, and a real `airflow dags test`
sweep ranked and reported. Dates run twice under the scheduler (one row per run key):
tests/scheduler/test_deployment.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from caio_testing import REPO, dag_bag, measured, our_processes

from caio_operators.operators.sweep import VARIANT_LAST_TASK, WaitForPreviousVariantSensor
from caio_operators.spec import SpecError, make_run_id, param_schema, run_key
from caio_operators.sweep import plan_sweep

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DATE = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def schema(tmp_path_factory, images_dir):
    return param_schema(tmp_path_factory.mktemp("home"), images_dir)


def test_runs_of_a_logical_date_share_a_key():
    scheduled = run_key("scheduled__2026-03-01T00:00:00+00:00", DATE)
    backfill = run_key("backfill__2026-03-01T00:00:00+00:00", DATE)
    assert scheduled == backfill == "2026-03-01T00:00:00+00:00"
    assert make_run_id("m", "v2", backfill) == "m-v2-2026-03-01t00-00-00-00-00"
    assert make_run_id("m", "v1", backfill) != make_run_id("m", "v2", backfill)  # per version
    # a manual trigger's logical date is its trigger time, or none: unique either way
    manual = "manual__2026-03-01T10:11:12.5+00:00"
    assert run_key(manual, None) == manual


def test_plan_gives_each_variant_its_own_validated_spec(schema):
    specs = plan_sweep({"model_name": "m", "users": 2, "variants": [
        {"name": "a", "model_version": "v1", "model_source": "builtin:tiny"},
        {"name": "b", "model_version": "v1", "model_source": "builtin:tiny", "replicas": 1},
        {"model_version": "v2", "model_source": "builtin:mobilenet_v3_small"}]},
        schema, dag_id="caio_version_sweep", airflow_run_id="manual__x")
    assert [s["extra"]["variant"] for s in specs] == ["a", "b", "v2"]
    assert [s["run_id"] for s in specs] == ["m-v1-manual-x-a", "m-v1-manual-x-b",
                                            "m-v2-manual-x-v2"]
    assert [s["replicas"] for s in specs] == [2, 1, 2] and {s["users"] for s in specs} == {2}


def test_plan_reports_every_bad_variant_at_once(schema):
    with pytest.raises(SpecError) as err:
        plan_sweep({"variants": [
            {"name": "a", "users": 0}, {"name": "a", "target": "mars"},
            {"name": "c", "model_version": "v1", "model_source": "builtin:tiny"},
            {"name": "d", "model_version": "v1", "model_source": "builtin:mobilenet_v3_small"},
        ]}, schema, dag_id="d", airflow_run_id="r")
    text = str(err.value)
    assert "variants[0].users=0" in text and "variants[1].target='mars'" in text
    assert "variants[1].name='a'" in text and "two model sources" in text
    with pytest.raises(SpecError, match="non-empty list"):
        plan_sweep({"variants": []}, schema, dag_id="d", airflow_run_id="r")


class _TaskStates:
    """The task instance's side of ``get_task_states``: literal states, the calls kept."""

    def __init__(self, map_index: int, states: dict[str, str]) -> None:
        self.map_index, self.states, self.calls = map_index, states, []

    def get_task_states(self, **query):
        self.calls.append(query)
        return {"r1": self.states}


@pytest.mark.parametrize(("index", "states", "passes"), [
    (0, {}, True),                                              # the first variant: no wait
    (1, {f"{VARIANT_LAST_TASK}_0": "running"}, False),
    (1, {}, False),                                             # not even created yet
    (1, {f"{VARIANT_LAST_TASK}_0": "failed"}, True),            # ended, in any state
    (2, {f"{VARIANT_LAST_TASK}_1": "success"}, True),
    (2, {f"{VARIANT_LAST_TASK}_1": "up_for_retry"}, False),
])
def test_a_variant_waits_until_the_previous_variants_chain_ended(index, states, passes):
    gate = WaitForPreviousVariantSensor(task_id="wait_turn", spec={})
    ti = _TaskStates(index, states)
    assert gate.poke({"ti": ti, "run_id": "r1"}) is passes
    assert all(c["task_ids"] == [VARIANT_LAST_TASK] and c["run_ids"] == ["r1"]
               and c["map_index"] == index - 1 for c in ti.calls)
    parallel = WaitForPreviousVariantSensor(task_id="wait_turn", spec={}, sequential=False)
    assert parallel.poke({"ti": _TaskStates(index, {}), "run_id": "r1"}) is True


# --- real Airflow runs -------------------------------------------------------------------------

def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "CAIO_HOME": str(home / "caio"),
            "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("airflow")
    subprocess.run([AIRFLOW, "db", "migrate"], env=_env(home), check=True,
                   capture_output=True, timeout=300)
    return home


def _dags_test(home: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([AIRFLOW, "dags", "test", *args], env=_env(home),
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc


def _query(warehouse: Path, sql: str):
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def assert_variants_ran_one_after_another(airflow_db: Path) -> None:
    """Variant 1's chain starts after variant 0's ended (its gate's pokes aside)."""
    with sqlite3.connect(airflow_db) as con:
        rows = con.execute(
            "SELECT task_id, map_index, start_date, end_date FROM task_instance "
            "WHERE dag_id = 'caio_version_sweep' AND task_id LIKE 'variant.%' "
            "AND task_id != 'variant.wait_turn' AND state != 'skipped'").fetchall()
    first_end = max(end for _, index, _, end in rows if index == 0)
    second_start = min(start for _, index, start, _ in rows if index == 1)
    assert first_end <= second_start, sorted(rows, key=lambda r: r[2])


@pytest.mark.slow
@pytest.mark.e2e
def test_sweep_of_two_variants_ranks_them_and_writes_both_reports(airflow_home, tmp_path):
    bucket, warehouse = tmp_path / "bucket", tmp_path / "wh.duckdb"
    conf = {"variants": [
        {"name": "mobile", "model_version": "mob", "model_source": "builtin:mobilenet_v3_small"},
        {"name": "tiny", "model_version": "tiny", "model_source": "builtin:tiny"}],
        "model_name": "m", "load_shape": "constant", "users": 4, "duration_s": 10,
        "replicas": 1, "workers": 1, "local_machine_type": "e2-standard-4",
        "bucket": f"file://{bucket}", "warehouse": f"duckdb://{warehouse}"}
    _dags_test(airflow_home, "caio_version_sweep", "--conf", json.dumps(conf))
    assert_variants_ran_one_after_another(airflow_home / "airflow.db")

    runs = {version: rps for version, rps, status, reason in _query(
        warehouse, "SELECT model_version, throughput_rps, status, reason FROM runs")
        if measured(status, reason)}
    assert set(runs) == {"mob", "tiny"} and runs["tiny"] > runs["mob"]
    [comparison] = (bucket / "sweeps").glob("*/comparison.json")
    ranking = json.loads(comparison.read_text())["ranking"]
    assert [r["variant"] for r in ranking] == ["tiny", "mobile"]  # faster first
    assert [r["rank"] for r in ranking] == [1, 2]
    assert ranking[1]["verdict"] == "baseline" and ranking[0]["verdict"] == "improvement"
    assert all(r["cost_per_1k"] > 0 for r in ranking)  # priced as an e2-standard-4
    html = comparison.with_suffix(".html").read_text()
    assert html.count("class='chart-box'") == 3 and "Latency vs throughput" in html
    history = (bucket / "reports" / "history.html").read_text()
    assert "History of all runs" in history and "m:tiny" in history
    verdicts = dict(_query(warehouse, "SELECT v.verdict, r.model_version FROM verdicts v "
                                      "JOIN runs r USING (run_id)"))
    assert verdicts["improvement"] == "tiny"
    assert not our_processes()


def test_sweep_and_reports_dags():
    bag = dag_bag(REPO / "dags")
    assert bag.import_errors == {}
    sweep = bag.dags["caio_version_sweep"]
    tasks = {t.task_id: t for t in sweep.tasks}
    assert {"plan", "variant.export", "variant.deploy", "variant.load", "variant.undeploy",
            "variant.harvest", "compare"} <= set(tasks)
    assert tasks["variant.deploy"].is_setup and tasks["variant.undeploy"].is_teardown
    assert sweep.max_active_tasks == 1  # one variant at a time by default
    turn = tasks["variant.wait_turn"]  # ... and each variant after the previous one's chain
    assert turn.downstream_task_ids == {"variant.export"} and turn.mode == "reschedule"
    assert turn.sequential and VARIANT_LAST_TASK in tasks
    # and, whatever CAIO_SWEEP_PARALLEL allows, one load of this machine at a time
    assert tasks["variant.load"].pool == tasks["variant.export"].pool == "caio_host"
    assert tasks["variant.load_gke"].pool == "default_pool"
    assert [a.name for a in tasks["variant.harvest"].outlets] == [
        "caio_runs", "caio_timeseries", "caio_requests"]
    assert "variants" in sweep.params and "model_version" in sweep.params
    load = bag.dags["caio_load_test"]
    assert [a.name for a in load.get_task("analyse").outlets] == ["caio_verdicts",
                                                                  "caio_comparisons"]
    reports = bag.dags["caio_reports"]
    assert "caio_verdicts" in str(reports.timetable.asset_condition)
