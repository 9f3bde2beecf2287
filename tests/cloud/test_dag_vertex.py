"""The whole caio_load_test DAG with target=vertex, a gs:// bucket and a bigquery:// warehouse.

Each test runs ``dag.test(run_conf=...)`` (the code path of ``airflow dags test``) in a fresh
interpreter, this file run as a script: Airflow reads its home and database once per
process, and the pytest process may already hold another one; the fakes are installed in
that interpreter, at the client boundary, before the DAG runs:

- Vertex AI: the provider's real ModelServiceHook / EndpointServiceHook, their GAPIC clients
  replaced by the in-memory Vertex of tests/cloud/test_vertex_target.py. Deploying a model
  there downloads its ``artifact_uri`` from the bucket and serves it with the real local
  model server (LocalTarget) on 127.0.0.1, which the deployment's predict URL points at;
  undeploying stops it. Real Locust processes load it.
- Cloud Logging metrics, the Dashboards API transport, Cloud Monitoring's metric client,
  BigQuery's client: the fakes of the adapter tests (BigQuery keeps its rows in DuckDB).
- Cloud Storage: the real gcsfs / google-cloud-storage code against the local emulator.

The script writes what the fakes saw as JSON; the tests assert on it and on the bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PROJECT = "proj-1"  # the dashboards fake serves this project
WAREHOUSE = "bigquery://my-project/bench"  # the FakeBigQuery project and dataset


# ================================================================ the tests (pytest process)


def _env(home: Path, gcs=None) -> dict[str, str]:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "CAIO_HOME": str(home / "caio"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "NO_GCE_CHECK": "true",  # no metadata server: ADC fails fast
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps(
            {"conn_type": "google_cloud_platform", "extra": {"project": PROJECT}}),
    }
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    if gcs is not None:
        env.update(STORAGE_EMULATOR_HOST=gcs.endpoint, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    return env


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("airflow-vertex")
    subprocess.run([AIRFLOW, "db", "migrate"], env=_env(home), check=True,
                   capture_output=True, timeout=300)
    return home


def _conf(bucket: str, images: Path, version: str) -> dict:
    return {
        "target": "vertex", "project": PROJECT, "region": "us-central1",
        "bucket": bucket, "warehouse": WAREHOUSE,
        "model_name": "tiny", "model_version": version, "model_source": "builtin:tiny",
        # Vertex AI's :predict calls the model's default signature
        "signature": "serving_default", "images_uri": str(images),
        "load_shape": "constant", "users": 2, "spawn_rate": 4, "duration_s": 5,
        "workers": 1, "think_time_s": 0.1, "machine_type": "n1-standard-2",
        "min_replicas": 1, "max_replicas": 2,
    }


def _run_dag(home: Path, gcs, tmp_path: Path, conf: dict, mode: str,
             mark_success: str = "") -> dict:
    out = tmp_path / "observed.json"
    args = {"conf": conf, "mode": mode, "out": str(out), "work": str(tmp_path / "driver"),
            "mark_success": mark_success}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), json.dumps(args)],
                          env=_env(home, gcs), capture_output=True, text=True, timeout=400,
                          cwd=tmp_path)
    text = proc.stdout + proc.stderr
    (tmp_path / "driver.log").write_text(text)
    assert proc.returncode == 0 and out.exists(), text[-6000:]
    observed = json.loads(out.read_text())
    observed["log"] = text
    return observed


@pytest.fixture
def images(tmp_path, images_dir) -> Path:
    """One image: a serving_default instance is ~1.4 MB of JSON pixels."""
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(images_dir / "noise_224x224.png", folder)
    return folder


pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _left_behind(*marks: str) -> list[str]:
    """Command lines of live processes mentioning one of ``marks`` (a run's paths)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(m in cmd for m in marks):
            found.append(cmd)
    return found


def test_vertex_run_end_to_end(airflow_home, gcs, tmp_path, images):
    from caio_testing import measured  # here: this file also runs as the DAG driver script

    from caio_operators import storage
    from caio_operators.layout import RunLayout

    bucket = f"gs://{gcs.bucket}/dag-{uuid.uuid4().hex[:8]}"
    seen = _run_dag(airflow_home, gcs, tmp_path, _conf(bucket, images, "v1"), mode="serve")

    assert seen["dag_state"] == "success", (seen["task_states"], seen["log"][-6000:])
    # Locust ran here (load_runner=local): the load task in the host pool, not the GKE one
    assert seen["task_states"].pop("load_gke") == "skipped"
    assert set(seen["task_states"].values()) == {"success"}

    # Vertex AI: upload, endpoint, deploy; the teardown undeploys and deletes both
    assert seen["vertex_methods"] == [
        "list_models", "upload_model", "list_endpoints", "create_endpoint", "get_endpoint",
        "deploy_model",
        "get_endpoint", "undeploy_model", "delete_endpoint", "delete_model"]
    run_id = seen["run_id"]
    upload = seen["vertex_requests"]["upload_model"]
    assert upload["model"]["artifact_uri"] == f"{bucket}/models/tiny/v1"
    assert upload["model"]["labels"]["caio_run"] == run_id
    deployed = seen["vertex_requests"]["deploy_model"]["deployed_model"]
    assert deployed["dedicated_resources"]["machine_spec"] == {"machine_type": "n1-standard-2"}
    assert deployed["enable_access_logging"] is True
    requests = seen["vertex_requests"]
    endpoint = requests["deploy_model"]["endpoint"]
    assert endpoint.endswith(f"/endpoints/{seen['endpoint_id']}")
    assert requests["create_endpoint"]["endpoint"]["display_name"] == f"caio-{run_id}"
    assert requests["undeploy_model"]["endpoint"] == endpoint
    assert requests["delete_endpoint"]["name"].endswith(f"/endpoints/{seen['endpoint_id']}")
    assert requests["delete_model"]["name"].rpartition("/")[-1] == seen["model_id"]
    assert seen["vertex_left"] == {"models": 0, "endpoints": 0}
    assert seen["served"]["requests"] > 0  # the fake endpoint really served the export

    # prepare_metrics: log-based metrics and the dashboard of this endpoint
    assert seen["logging_methods"] == ["get", "create"] * 4
    assert [(m, p) for m, p in seen["dashboard_requests"] if m != "GET"] == [
        ("POST", f"/v1/projects/{PROJECT}/dashboards")]
    assert f'resource.labels.endpoint_id=\\"{seen["endpoint_id"]}\\"' in seen["dashboard_body"]

    # harvest: client records + Cloud Monitoring rows, into BigQuery
    runs = seen["bq_runs"]
    assert len(runs) == 1
    run = runs[0]
    assert (run["run_id"], run["target"], run["protocol"]) == (run_id, "vertex", "vertex")
    assert measured(run["status"], run["reason"]), run["reason"]
    assert run["requests"] > 5 and run["failures"] == 0
    assert run["monitoring_coverage"] == "complete"  # the fake's points cover the window
    assert seen["bq_counts"]["requests"] == run["requests"]
    assert {"request_rate_rps", "client_latency_p95_ms", "users", "replicas"} <= set(
        seen["bq_metrics"])
    assert seen["monitoring_requests"] > 0
    assert all('resource.labels.endpoint_id="' + seen["endpoint_id"] + '"' in f
               or "test_id" in f for f in seen["monitoring_filters"])

    # the bucket (the emulator): the model, Locust's files, Parquet tables, the report
    layout = RunLayout(bucket, run_id)
    assert storage.exists(f"{bucket}/models/tiny/v1/saved_model.pb")
    assert storage.list_files(layout.tables_dir, ".parquet") == [
        layout.table_uri(t) for t in ("requests", "runs", "timeseries")]
    assert storage.exists(f"{layout.locust_csv_prefix}_stats_history.csv")
    assert storage.exists(layout.locust_html)
    report = storage.read_text(layout.report_html)
    assert run_id in report and "class='chart-box'" in report
    # the master could not reach Cloud Logging here (no credentials): logged, load went on
    master_log = storage.read_text(storage.join(layout.load_dir, "logs", "master.log"))
    assert "Cloud Logging is off for this run" in master_log
    assert not _left_behind(str(tmp_path), bucket), "processes left after the run"
    assert not list(Path(tempfile.gettempdir()).glob(f"caio-load-{run_id}-*"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failed_load_still_tears_down_the_endpoint_and_model(airflow_home, gcs, tmp_path,
                                                             images):
    bucket = f"gs://{gcs.bucket}/dag-{uuid.uuid4().hex[:8]}"
    # The export is not under test here and is the slowest task: marked done, not run.
    seen = _run_dag(airflow_home, gcs, tmp_path, _conf(bucket, images, "down"), mode="refuse",
                    mark_success="^export$")

    assert seen["dag_state"] == "failed"
    states = seen["task_states"]
    assert states["analyse"] == "failed"  # the run failed: every request was refused
    assert states["undeploy"] == states["harvest"] == "success"
    assert seen["vertex_methods"][-3:] == ["undeploy_model", "delete_endpoint", "delete_model"]
    assert seen["vertex_left"] == {"models": 0, "endpoints": 0}
    (run,) = seen["bq_runs"]
    assert run["status"] == "failed" and run["requests"] > 0
    assert run["failures"] == run["requests"]
    assert "requests failed" in run["reason"]
    assert not _left_behind(str(tmp_path), bucket)


# ================================================================ the driver (its own process)


def _driver(args: dict) -> None:  # pragma: no cover - runs in the subprocess
    sys.path[:0] = [str(REPO / "plugins"), str(HERE)]
    work = Path(args["work"])
    work.mkdir(parents=True, exist_ok=True)
    mode = args["mode"]
    port = _free_port()

    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook
    from airflow.providers.google.cloud.hooks.vertex_ai.endpoint_service import (
        EndpointServiceHook,
    )
    from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook
    from bq_fakes import FakeBigQuery
    from google.cloud import monitoring_v3
    from test_dashboard import FakeDashboardsHttp
    from test_metrics_log_metrics import FakeMetricsClient
    from test_vertex_target import FakeEndpointServiceClient, FakeModelServiceClient, FakeVertex

    from caio_operators import storage
    from caio_operators.hooks.logging_metrics import LoggingMetricsHook
    from caio_operators.hooks.monitoring import MonitoringHook
    from caio_operators.targets import vertex
    from caio_operators.targets.local import LocalTarget

    api = FakeVertex(polls=0)
    server: dict = {}
    uploaded: list[str] = []  # ids of the models upload_model created

    def serve(model_name: str) -> None:
        """The fake endpoint serves the uploaded artifact for real, on 127.0.0.1:<port>."""
        model = api.models[model_name.rpartition("/")[-1]]
        local = work / "model"
        for uri in storage.list_files(model.artifact_uri):
            target = local / uri[len(model.artifact_uri) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(uri))
        server["deployment"] = LocalTarget().deploy(
            model_uri=str(local), model_name="tiny", model_version="served", replicas=1,
            server_dir=str(work / "server"), port=port, threads_per_replica=1,
            max_lifetime_s=600)

    def stop() -> None:
        deployment = server.pop("deployment", None)
        if deployment is not None:
            LocalTarget().undeploy(deployment)

    class ServingEndpointClient(FakeEndpointServiceClient):
        def deploy_model(self, request, **kwargs):
            operation = super().deploy_model(request, **kwargs)  # done at once (polls=0)
            if mode == "serve":
                serve(request["deployed_model"]["model"])
            return operation

        def undeploy_model(self, request, **kwargs):
            operation = super().undeploy_model(request, **kwargs)
            stop()
            return operation

    class RecordingModelClient(FakeModelServiceClient):
        def upload_model(self, request, **kwargs):
            before = set(api.models)
            operation = super().upload_model(request, **kwargs)  # done at once (polls=0)
            uploaded.extend(sorted(set(api.models) - before))
            return operation

    ModelServiceHook.get_model_service_client = lambda self, region=None: (
        RecordingModelClient(api))
    EndpointServiceHook.get_endpoint_service_client = lambda self, region=None: (
        ServingEndpointClient(api))
    # the deployment's predict URL: the local server (serve) or a closed port (refuse)
    vertex.cloud_base_url = lambda protocol, region: f"http://127.0.0.1:{port}"

    logging_client, dashboards_http = FakeMetricsClient(), FakeDashboardsHttp()
    LoggingMetricsHook.get_conn = lambda self: logging_client
    MonitoringHook._authorize = lambda self: dashboards_http

    class MetricClient:
        """Answers the replica count for the requested window; nothing else is known."""

        def __init__(self):
            self.requests = []

        def list_time_series(self, request):
            assert isinstance(request, monitoring_v3.ListTimeSeriesRequest)
            self.requests.append(request)
            if "online/replicas" not in request.filter:
                return iter([])
            end = int(request.interval.end_time.timestamp())
            return iter([monitoring_v3.TimeSeries(metric={"type": "t"}, points=[{
                "interval": {"start_time": {"seconds": end - 60},
                             "end_time": {"seconds": end}},
                "value": {"double_value": 1.0}}])])

    metric_client = MetricClient()
    MonitoringHook.get_metric_client = lambda self: metric_client
    bq = FakeBigQuery()
    BigQueryHook.get_client = lambda self, project_id=None, location=None: bq

    dag = DagBag(dag_folder=str(REPO / "dags")).dags["caio_load_test"]
    try:
        dag_run = dag.test(run_conf=args["conf"],
                           mark_success_pattern=args["mark_success"] or None)
    finally:
        stop()  # the teardown should have done it; never leave a server behind

    states = {ti.task_id: str(ti.state.value if hasattr(ti.state, "value") else ti.state)
              for ti in dag_run.get_task_instances()}
    requests = {}
    for method, request in api.calls:
        requests.setdefault(method, request)
    runs = bq.con.execute('SELECT * FROM "my-project"."bench"."runs"')
    names = [d[0] for d in runs.description]
    run_rows = [dict(zip(names, row, strict=True)) for row in runs.fetchall()]
    metrics = bq.con.execute(
        'SELECT DISTINCT metric FROM "my-project"."bench"."timeseries"').fetchall()
    endpoint_id = requests.get("deploy_model", {}).get("endpoint", "").rpartition("/")[-1]
    posted = [body for method, _, _, body in dashboards_http.requests if method == "POST"]
    served = server_records(work / "server" / "requests")
    observed = {
        "dag_state": str(getattr(dag_run.state, "value", dag_run.state)),
        "task_states": states,
        "run_id": run_rows[0]["run_id"] if run_rows else "",
        "vertex_methods": api.methods(),
        "vertex_requests": requests,
        "vertex_left": {"models": len(api.models), "endpoints": len(api.endpoints)},
        "endpoint_id": endpoint_id,
        "model_id": uploaded[0] if uploaded else "",
        "served": {"requests": served},
        "logging_methods": logging_client.methods(),
        "dashboard_requests": [(m, p) for m, p, _, _ in dashboards_http.requests],
        "dashboard_body": json.dumps(posted),
        "monitoring_requests": len(metric_client.requests),
        "monitoring_filters": [r.filter for r in metric_client.requests],
        "bq_runs": run_rows,
        "bq_counts": {t: bq.rows(t) for t in ("runs", "timeseries", "requests")},
        "bq_metrics": sorted(m for (m,) in metrics),
    }
    Path(args["out"]).write_text(json.dumps(observed, default=str, indent=1))


def server_records(folder: Path) -> int:
    """Requests the local server recorded (its raw server-side CSVs)."""
    return sum(max(0, len(p.read_text().splitlines()) - 1) for p in folder.glob("*.csv"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    _driver(json.loads(sys.argv[1]))
