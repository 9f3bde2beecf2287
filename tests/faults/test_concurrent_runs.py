"""Fault 6 and the credentials scan: two `airflow dags test caio_load_test` runs at once on
this machine, sharing one bucket, one DuckDB warehouse and the same model name and
version, with fake credentials planted in their environment.

Both complete with their own run id, folders, ports and rows; then every byte they wrote
(Airflow's logs and metadata database with its XComs, the bucket with the reports and
Parquet files, the warehouse, the console output) is searched for the planted secret.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from caio_testing import REPO, our_processes

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.e2e]

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
SECRET = f"caio-planted-secret-{uuid.uuid4().hex}"


def _env(home: Path) -> dict[str, str]:
    connection = {"conn_type": "google_cloud_platform", "password": SECRET,
                  "extra": {"keyfile_dict": {"private_key": SECRET}}}
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "CAIO_HOME": str(home / "caio"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "plugins"),
                                                  os.environ.get("PYTHONPATH")) if p),
        # planted credentials: none of them may be written anywhere
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps(connection),
        "GOOGLE_OAUTH_ACCESS_TOKEN": SECRET, "CAIO_API_TOKEN": SECRET,
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }


def _migrate(home: Path) -> None:
    subprocess.run([AIRFLOW, "db", "migrate"], env=_env(home), check=True,
                   capture_output=True, timeout=300)


def test_two_dag_runs_at_once_and_no_secret_is_written(tmp_path):
    homes = [tmp_path / "airflow-a", tmp_path / "airflow-b"]
    for home in homes:
        _migrate(home)
    bucket, warehouse = tmp_path / "bucket", tmp_path / "wh.duckdb"
    conf = {"model_name": "tiny", "model_version": "shared", "model_source": "builtin:tiny",
            "replicas": 1, "workers": 1, "load_shape": "constant", "users": 2,
            "duration_s": 8, "bucket": f"file://{bucket}", "warehouse": f"duckdb://{warehouse}"}
    procs = [subprocess.Popen([AIRFLOW, "dags", "test", "caio_load_test", "--conf",
                               json.dumps(conf)], env=_env(home), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for home in homes]
    outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-6000:]

    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as con:
        runs = con.execute("SELECT run_id, status, requests FROM runs").fetchall()
        overlaps = dict(con.execute("SELECT run_id, overlapping_runs FROM runs").fetchall())
        per_run = dict(con.execute("SELECT run_id, count(*) FROM requests WHERE "
                                   "source = 'client' GROUP BY run_id").fetchall())
    assert len(runs) == 2 and len({r[0] for r in runs}) == 2
    # two Airflow installations know nothing of each other's pool: their loads overlapped,
    # and each run says so (metrics/host.py), naming the other
    a, b = sorted(overlaps)
    assert overlaps[a] == b or overlaps[b] == a, overlaps
    for run_id, status, requests in runs:
        assert status in ("success", "degraded") and requests > 0 and per_run[run_id] == requests
        run_dir = bucket / "runs" / run_id
        assert (run_dir / "report" / "report.html").exists()
        assert (run_dir / "tables" / "requests.parquet").exists()
    # each run had its own server on its own port and its own Locust master port
    ports = set()
    for run_id, *_ in runs:
        config = json.loads((bucket / "runs" / run_id / "load" / "config.json").read_text())
        ports.add(config["predict_url"].split("/")[2])
    assert len(ports) == 2
    assert not our_processes()

    # the planted secret is nowhere: logs, metadata DB (XComs), bucket, warehouse, console
    places = [*homes, bucket, warehouse]
    scanned, found = 0, []
    for place in places:
        for path in ([place] if place.is_file() else place.rglob("*")):
            if path.is_file():
                scanned += 1
                if SECRET.encode() in path.read_bytes():
                    found.append(str(path))
    found += [f"console of run {i}" for i, out in enumerate(outputs) if SECRET in out]
    assert scanned > 50 and not found, found
