"""The DAGs under a real scheduler, driven as users drive them: the REST API (what the
Trigger form sends), the backfill commands of docs/scheduling.md as written, a sweep, the
asset-triggered reports, and a load task marked failed while it runs."""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise
from urllib.parse import quote

import pytest
from caio_testing import doc_commands, measured, our_processes
from scheduler_helpers import QUICK, iso, query, states, wait_until

from caio_operators.analysis.compare import NO_BASELINE
from caio_operators.localairflow import DeploymentError, free_port
from caio_operators.sweep import sweep_id

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]

LOAD_TEST_TASKS = {"validate", "export", "deploy", "prepare_metrics", "choose_load", "load",
                   "undeploy", "harvest", "analyse"}
# Locust runs here: choose_load skips the GKE load (issue 12's host pool)
LOAD_TEST_STATES = {**dict.fromkeys(LOAD_TEST_TASKS, "success"), "load_gke": "skipped"}


def test_a_triggered_run_runs_every_task_in_its_own_process(api, triggered):
    assert triggered["state"] == "success", triggered
    tis = api.task_instances("caio_load_test", triggered["dag_run_id"])
    assert states(tis) == LOAD_TEST_STATES
    # the LocalExecutor ran each task in a process of its own, none in the scheduler's
    pids = {t["pid"] for t in tis if t["state"] == "success"}
    assert len(pids) == len(LOAD_TEST_TASKS) and None not in pids
    # XCom through the execution API: deploy's Deployment reached load and undeploy
    xcom = api.get(f"/dags/caio_load_test/dagRuns/{triggered['dag_run_id']}/taskInstances/"
                   "deploy/xcomEntries/return_value")
    assert "http://127.0.0.1:" in str(xcom["value"])

    [(run_id, status, reason, dag_id, requests)] = query(
        api.deployment, "SELECT run_id, status, reason, dag_id, requests FROM runs "
                        "WHERE model_name = 'sched' AND model_version = 't1'")
    assert measured(status, reason) and dag_id == "caio_load_test" and requests > 0, reason
    [(client, server)] = query(api.deployment, "SELECT count(*) FILTER (source = 'client'), "
                               "count(*) FILTER (source = 'server') FROM requests "
                               "WHERE run_id = ?", [run_id])
    assert client == requests and server > 0
    report = api.deployment.caio_home / "bucket" / "runs" / run_id / "report" / "report.html"
    assert run_id in report.read_text()
    assert not our_processes()  # the teardown stopped the server, Locust had ended


def test_caio_reports_runs_from_the_asset_event(api, triggered):
    """`analyse` emits caio_verdicts; the scheduler starts caio_reports from that event."""
    def asset_run():
        runs = api.get("/dags/caio_reports/dagRuns", run_type="asset_triggered")["dag_runs"]
        return [r for r in runs if r["state"] in ("success", "failed")]

    [run] = wait_until(asset_run, 180, lambda: api.get("/dags/caio_reports/dagRuns"))
    assert run["state"] == "success"
    history = api.deployment.caio_home / "bucket" / "reports" / "history.html"
    assert "sched:t1" in history.read_text()


def test_the_docs_backfill_commands_work_as_written_and_again(api, today_taken):
    """docs/scheduling.md's block, run as it is written (its `export` line is the env of the
    deployment): v1 over two dates, unpause, v2 over the same dates; then the first command
    again. Each backfill is created once the one before is done, as the doc says."""
    commands = doc_commands("scheduling.md", "backfill")
    assert [argv[:3] for argv in commands] == [["airflow", "backfill", "create"],
                                               ["airflow", "dags", "unpause"],
                                               ["airflow", "backfill", "create"]]

    def run(argv: list[str]) -> None:
        if argv[1] == "backfill":
            api.wait_backfills_done("caio_load_test")
        api.cli(*argv[1:])

    for argv in commands:
        run(argv)
    api.wait_backfills_done("caio_load_test")
    before = query(api.deployment, "SELECT run_id, harvested_at, status FROM runs "
                                   "WHERE model_name = 'readme'")
    first = {run_id: harvested_at for run_id, harvested_at, _ in before}
    # the v1 runs v2 could be judged against: successful when v2 ran (a v1 run this shared
    # machine degraded, the deployment's own processes counting as others, is no baseline)
    usable = {run_id for run_id, _, status in before if "-v1-" in run_id and status == "success"}
    run(commands[0])
    api.wait_backfills_done("caio_load_test")

    rows = query(api.deployment, "SELECT run_id, count(*), min(status), max(harvested_at), "
                                 "min(reason) FROM runs WHERE model_name = 'readme' "
                                 "GROUP BY run_id ORDER BY run_id")
    keys = [f"readme-{v}-2026-11-0{d}t00-00-00-00-00" for v in ("v1", "v2") for d in (1, 2)]
    assert [r[0] for r in rows] == keys and {r[1] for r in rows} == {1}, rows
    assert all(measured(r[2], r[4]) for r in rows), rows
    for run_id, _, _, harvested_at, _ in rows:  # v1 replaced by the second run, v2 kept
        assert (harvested_at > first[run_id]) == ("-v1-" in run_id), (run_id, first)
    per_key = query(api.deployment, "SELECT run_id, count(*) FROM verdicts "
                                     "WHERE run_id LIKE 'readme-%' GROUP BY run_id")
    assert sorted(per_key) == [(k, 1) for k in keys]
    baselines = query(api.deployment, "SELECT baseline_rule, baseline_run_id, verdict "
                                      "FROM verdicts WHERE run_id LIKE 'readme-v2-%'")
    for rule, base, verdict in baselines:
        if usable:
            assert rule == "version:v1" and base in usable, (rule, base, verdict)
        else:
            assert verdict == NO_BASELINE, (rule, base, verdict)

    # one Airflow run per date, last re-run with v1's conf, as a backfill
    airflow_runs = api.get("/dags/caio_load_test/dagRuns", logical_date_gte="2026-11-01T00:00:00Z",
                           logical_date_lte="2026-11-02T00:00:00Z")["dag_runs"]
    assert len(airflow_runs) == 2
    assert all(r["state"] == "success" and r["run_type"] == "backfill"
               and r["conf"]["model_version"] == "v1" for r in airflow_runs)
    assert not our_processes()


def test_a_sweep_runs_one_task_and_one_variant_at_a_time(api):
    conf = {"variants": [{"name": "one", "model_version": "s1"},
                         {"name": "two", "model_version": "s2"}],
            "model_name": "sweep", **QUICK}
    run = api.wait_run("caio_version_sweep", api.trigger("caio_version_sweep", conf), 420)
    assert run["state"] == "success", run
    tis = [t for t in api.task_instances("caio_version_sweep", run["dag_run_id"])
           if t["start_date"]]
    assert set(states(tis).values()) <= {"success", "skipped"}  # a GKE load is skipped
    assert {t["map_index"] for t in tis if t["task_id"].startswith("variant.")} == {0, 1}
    spans = sorted((iso(t["start_date"]), iso(t["end_date"]), t["task_id"], t["map_index"])
                   for t in tis if t["state"] != "skipped")
    # one task at a time, so each load had the machine to itself ...
    for before, after in pairwise(spans):
        assert before[1] <= after[0], (before, after)
    # ... and variant 1's chain after variant 0's (its wait_turn gate's pokes aside)
    chain = [s for s in spans if s[2].startswith("variant.") and s[2] != "variant.wait_turn"]
    assert max(s[1] for s in chain if s[3] == 0) <= min(s[0] for s in chain if s[3] == 1), spans
    rows = query(api.deployment, "SELECT model_version, status, reason FROM runs "
                                 "WHERE model_name = 'sweep' ORDER BY 1")
    assert [r[0] for r in rows] == ["s1", "s2"] and all(measured(*r[1:]) for r in rows), rows
    assert list((api.deployment.caio_home / "bucket" / "sweeps").glob("*/comparison.html"))
    # the Sweep comparison and Benchmark history tabs (caio_bench plugin) find its reports
    comparison = api.page(f"/caio-bench/dags/caio_version_sweep/runs/"
                          f"{quote(run['dag_run_id'], safe='')}/comparison")
    assert f"<h1>Sweep {sweep_id(run['dag_run_id'])}</h1>" in comparison
    assert "<h1>History of all runs</h1>" in api.page("/caio-bench/dags/caio_version_sweep/history")
    assert not our_processes()


def test_a_load_task_marked_failed_leaves_no_process_and_the_run_harvested(api, today_taken):
    """Mark failed in the UI (the same API call) while Locust runs: the supervisor kills the
    task, `on_kill` stops Locust, the teardown stops the server, harvest stores the run."""
    api.unpause("caio_load_test")
    run_id = api.trigger("caio_load_test", {"model_name": "kill", "model_version": "k1",
                                            **QUICK, "duration_s": 300})

    def locust_running():
        return [p for p in our_processes() if "locustfile.py" in " ".join(p.cmdline())]

    wait_until(locust_running, 240,
               lambda: states(api.task_instances("caio_load_test", run_id)))
    api.call("PATCH", f"/dags/caio_load_test/dagRuns/{run_id}/taskInstances/load",
             {"new_state": "failed"})
    run = api.wait_run("caio_load_test", run_id, 240)

    assert run["state"] == "failed"
    final = states(api.task_instances("caio_load_test", run_id))
    assert final["load"] == "failed" and final["undeploy"] == "success"
    assert final["harvest"] == "success", final
    assert not our_processes()
    [(status, reason)] = query(api.deployment, "SELECT status, reason FROM runs "
                                               "WHERE model_name = 'kill'")
    # on_kill stopped Locust and the load wrote its result, or the task ended before it could
    assert status == "failed", (status, reason)
    assert reason.startswith(("stopped by request", "the load started but wrote no result")), reason


def test_a_second_start_and_a_taken_port_are_refused_saying_what_to_do(api, tmp_path):
    running = api.deployment
    with pytest.raises(DeploymentError, match=r"already running .*make airflow-stop"):
        running.start()
    other = tmp_path / "other"
    proc = subprocess.run(
        [sys.executable, "-m", "caio_operators.localairflow", "start", "--home", str(other),
         "--dags-folder", str(running.dags_folder), "--caio-home", str(tmp_path / "caio"),
         "--api-port", str(running.api_port), "--db-port", str(free_port()),
         "--port-hint", "make airflow AIRFLOW_PORT=<port>"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert (f"port {running.api_port} on 127.0.0.1, for the Airflow UI / REST API, is not free"
            in proc.stderr and ": pid " in proc.stderr
            and "choose another port: make airflow AIRFLOW_PORT=<port>" in proc.stderr), proc.stderr
    assert not other.exists()  # refused before anything was created
