"""A load that shared its machine is marked degraded with the figures (metrics/host.py).

The rule with literal figures, the load registry with an injected clock, and one real
run: Locust processes against a loopback endpoint while a CPU-burning process runs, then
harvested into DuckDB.
"""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest
from conftest import PredictServer

from caio_operators.metrics import host


def test_other_processes_share_from_literal_intervals():
    # (wall s, host busy CPU-s, our CPU-s): 2 s with the others at 0.5 core, then 2 s alone
    figures = host.host_figures([(1.0, 1.5, 1.0), (1.0, 1.5, 1.0), (2.0, 2.0, 2.1)])
    assert figures == {"host_cpu_pct": 125.0, "own_cpu_pct": 100.0,
                       "host_other_cpu_pct": 25.0, "seconds": 4.0}
    assert host.host_problems(figures) == [
        "shared machine: other processes used 25% of a core on average during the load "
        "(limit 10%, whole machine 125%, this run 100% over 4 s)"]
    quiet = host.host_figures([(1.0, 1.05, 1.0)])
    assert quiet["host_other_cpu_pct"] == pytest.approx(5.0) and not host.host_problems(quiet)
    assert host.host_figures([])["host_other_cpu_pct"] is None


def test_overlapping_load_windows_find_each_other(tmp_path):
    now = [100.0]
    registry = host.LoadRegistry(tmp_path / "loads")

    def watch(run_id):
        return host.HostWatch(run_id, registry=registry, clock=lambda: now[0])

    first, second, later = watch("run-a"), watch("run-b"), watch("run-c")
    first.start()
    now[0] = 105.0
    second.start()
    now[0] = 110.0
    a = first.finish()  # run-b is still loading
    now[0] = 120.0
    b = second.finish()
    now[0] = 130.0
    later.start()
    now[0] = 140.0
    c = later.finish()
    assert [o["run_id"] for o in a["overlapping"]] == ["run-b"]
    assert [(o["run_id"], o["started_at"], o["ended_at"]) for o in b["overlapping"]] == [
        ("run-a", 100.0, 110.0)]
    assert c["overlapping"] == []
    assert host.host_problems({"overlapping": b["overlapping"]})[0].startswith(
        "shared machine: the load of caio run run-a (pid ")


@pytest.mark.slow
def test_a_load_beside_a_cpu_burner_is_degraded_with_its_share(tmp_path, images_dir):
    import duckdb

    from caio_operators import pipeline
    from caio_operators.spec import param_schema, validate_params

    # Someone else's process: started through a parent that exits at once, so it is no
    # descendant of this one (the launcher counts its own process tree as the run's).
    burner = psutil.Process(int(subprocess.run(
        [sys.executable, "-c", "import subprocess, sys; print(subprocess.Popen([sys.executable, "
         "'-c', 'while True: pass'], start_new_session=True, stdout=subprocess.DEVNULL, "
         "stderr=subprocess.DEVNULL).pid)"],
        capture_output=True, text=True, check=True, timeout=30).stdout))
    assert burner.pid not in {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        with PredictServer(error_every=0, fail_every=0) as server:
            params = {"model_name": "tiny", "model_version": "shared", "target": "endpoint",
                      "endpoint_url": server.url, "protocol": "tfserving",
                      "load_shape": "constant", "users": 2, "workers": 1, "duration_s": 6,
                      "bucket": f"file://{tmp_path}/bucket",
                      "warehouse": f"duckdb://{tmp_path}/wh.duckdb"}
            spec = validate_params(params, param_schema(tmp_path, images_dir),
                                   dag_id="caio_load_test", airflow_run_id="host-share")
            deployment = pipeline.deploy(spec)
            pipeline.run_load(spec, deployment)
    finally:
        burner.kill()
        burner.wait(10)  # psutil waits for a process that is not its child too
    pipeline.harvest(spec, deployment=deployment)

    with duckdb.connect(f"{tmp_path}/wh.duckdb", read_only=True) as con:
        (status, reason, other, whole, overlaps), = con.execute(
            "SELECT status, reason, host_other_cpu_pct, host_cpu_pct, overlapping_runs "
            "FROM runs").fetchall()
        series = dict(con.execute("SELECT metric, count(*) FROM timeseries WHERE metric "
                                  "LIKE 'host%' GROUP BY metric").fetchall())
    # the burner alone keeps a core busy whenever it gets one
    assert status == "degraded" and other > host.OTHER_CPU_LIMIT_PCT, reason
    assert f"other processes used {other:.0f}% of a core" in reason
    assert whole >= other and overlaps == ""
    assert series["host_cpu_pct"] == series["host_other_cpu_pct"] >= 5
