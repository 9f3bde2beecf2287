"""The cloud path wired through the pipeline stages and the operators, with the fakes of the
adapter tests injected at the client boundary: the provider hooks' Vertex AI GAPIC clients,
the AI Platform REST transport, the Logging metrics client, the Monitoring clients, the
BigQuery client and a Kubernetes API; buckets are real gs:// paths on the local GCS emulator.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("google.cloud.aiplatform_v1")

from google.api_core.exceptions import PermissionDenied

from caio_operators import pipeline, storage
from caio_operators.spec import param_schema, validate_params

PROJECT = "proj-1"  # the dashboards fake serves this project
REGION = "us-central1"
WAREHOUSE = "bigquery://my-project/bench"  # the FakeBigQuery project and dataset
SA = "bench@proj-1.iam.gserviceaccount.com"
AIRFLOW_RUN = "manual__2026-11-24T12:00:00+00:00"


@pytest.fixture(autouse=True)
def google_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
                       json.dumps({"conn_type": "google_cloud_platform",
                                   "extra": {"project": "conn-proj"}}))


@pytest.fixture(scope="module")
def schema(tmp_path_factory, images_dir):
    return param_schema(tmp_path_factory.mktemp("home"), images_dir)


def cloud_spec(schema, **params):
    values = {"target": "vertex", "model_name": "tiny", "model_version": "v1",
              "model_source": "builtin:tiny", "bucket": "gs://caio-test/wiring",
              "project": PROJECT, "region": REGION, "warehouse": WAREHOUSE,
              "impersonation_chain": SA, "load_shape": "constant", "users": 2,
              "duration_s": 10, **params}
    return validate_params(values, schema, dag_id="caio_load_test", airflow_run_id=AIRFLOW_RUN)


def test_the_registry_builds_the_cloud_targets():
    from caio_operators.targets.base import get_target, known_targets

    assert {"vertex", "caip"} <= set(known_targets())
    assert type(get_target("vertex")).__name__ == "VertexTarget"
    assert type(get_target("caip")).__name__ == "CaipTarget"


# ---------------------------------------------------------------- deploy / teardown


@pytest.fixture
def vertex_api(monkeypatch):
    """The provider's real hooks, their GAPIC clients replaced by the in-memory Vertex AI."""
    from airflow.providers.google.cloud.hooks.vertex_ai.endpoint_service import (
        EndpointServiceHook,
    )
    from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook
    from test_vertex_target import FakeEndpointServiceClient, FakeModelServiceClient, FakeVertex

    api = FakeVertex(polls=0)
    api.hooks = []

    def model_client(self, region=None):
        api.hooks.append((self.gcp_conn_id, tuple(self.impersonation_chain or ()), region))
        return FakeModelServiceClient(api)

    def endpoint_client(self, region=None):
        api.hooks.append((self.gcp_conn_id, tuple(self.impersonation_chain or ()), region))
        return FakeEndpointServiceClient(api)

    monkeypatch.setattr(ModelServiceHook, "get_model_service_client", model_client)
    monkeypatch.setattr(EndpointServiceHook, "get_endpoint_service_client", endpoint_client)
    return api


def test_vertex_deploy_then_a_teardown_without_deployment_cleans_up_by_run_id(schema,
                                                                             vertex_api):
    from caio_operators.operators import UndeployModelOperator

    spec = cloud_spec(schema, min_replicas=2, max_replicas=3, signature="serving_default")

    deployment = pipeline.deploy(spec)

    assert vertex_api.methods() == ["list_models", "upload_model", "list_endpoints",
                                    "create_endpoint", "get_endpoint", "deploy_model"]
    upload = vertex_api.request("upload_model")["model"]
    assert upload["artifact_uri"] == spec.model_uri == "gs://caio-test/wiring/models/tiny/v1"
    assert upload["labels"]["caio_run"] == spec.run_id
    resources = vertex_api.request("deploy_model")["deployed_model"]["dedicated_resources"]
    assert (resources["min_replica_count"], resources["max_replica_count"]) == (2, 3)
    assert set(vertex_api.hooks) == {("google_cloud_default", (SA,), REGION)}
    assert deployment["predict_url"] == (
        f"https://{REGION}-aiplatform.googleapis.com/v1/projects/{PROJECT}/locations/{REGION}"
        f"/endpoints/{deployment['endpoint_id']}:predict")
    assert json.loads(json.dumps(deployment)) == deployment  # XCom-safe

    # The deploy task died before returning: the teardown only has the spec.
    UndeployModelOperator(task_id="undeploy", deployment=None,
                          spec=spec.to_dict()).execute({})

    assert vertex_api.methods()[6:] == ["list_models", "list_endpoints", "get_endpoint",
                                        "undeploy_model", "delete_endpoint", "delete_model"]
    assert vertex_api.calls[6][1]["filter"] == f'labels.caio_run="{spec.run_id}"'
    assert vertex_api.models == {} and vertex_api.endpoints == {}


def test_vertex_with_the_preprocess_signature_uses_raw_predict(schema, vertex_api):
    """Vertex's :predict serves only the default signature; :rawPredict carries the TF
    Serving body with signature_name through to the container."""
    deployment = pipeline.deploy(cloud_spec(schema, signature="serving_preprocess"))
    assert deployment["predict_url"].endswith(
        f"/endpoints/{deployment['endpoint_id']}:rawPredict")


def test_teardown_without_spec_or_deployment_does_nothing(vertex_api):
    pipeline.undeploy(None, spec=None)
    assert vertex_api.calls == []


_CAIP: dict = {}


def fast_caip_target():
    """A CaipTarget whose hook speaks to the fake AI Platform REST API without sleeping."""
    from caio_operators.hooks.caip import AIPlatformPredictionHook
    from caio_operators.targets.caip import CaipTarget

    hook = AIPlatformPredictionHook(region=REGION, session=_CAIP["api"], sleep=lambda s: None)
    return CaipTarget(hook=hook, poll_initial_s=0.0, sleep=lambda s: None)


def test_caip_deploy_and_stub_teardown_through_the_pipeline(schema, monkeypatch):
    from test_caip import FakeMlApi

    from caio_operators.targets import base

    api = FakeMlApi(project=PROJECT, host=f"https://{REGION}-ml.googleapis.com/v1", polls=1)
    monkeypatch.setitem(_CAIP, "api", api)
    monkeypatch.setitem(base._TARGETS, "caip", "test_wiring:fast_caip_target")
    spec = cloud_spec(schema, target="caip", runtime_version="2.15")

    deployment = pipeline.deploy(spec)

    version = f"run_{spec.run_id.replace('-', '_')}"
    assert deployment["version"] == version and deployment["model"] == "tiny"
    body = api.body("POST", "/models/tiny/versions")
    assert (body["deploymentUri"], body["runtimeVersion"]) == (spec.model_uri, "2.15")
    assert deployment["predict_url"] == (
        f"https://{REGION}-ml.googleapis.com/v1/projects/{PROJECT}/models/tiny/versions/"
        f"{version}:predict")

    pipeline.undeploy(None, spec=spec)  # no deployment dict: names come from the run id

    assert api.models == {}
    assert "DELETE" in [m for m, *_ in api.calls]


# ---------------------------------------------------------------- prepare metrics


@pytest.fixture
def cloud_metrics(monkeypatch):
    """LoggingMetricsHook's client and MonitoringHook's transport and metric client, faked."""
    from test_dashboard import FakeDashboardsHttp
    from test_metrics_log_metrics import FakeMetricsClient
    from test_monitoring_harvest import FakeMetricClient

    from caio_operators.hooks.logging_metrics import LoggingMetricsHook
    from caio_operators.hooks.monitoring import MonitoringHook

    fakes = SimpleNamespace(logging=FakeMetricsClient(), http=FakeDashboardsHttp(),
                            metrics=FakeMetricClient(), hooks=[])

    def get_conn(self):
        fakes.hooks.append(("logging", self.gcp_conn_id, self.impersonation_chain))
        return fakes.logging

    def authorize(self):
        fakes.hooks.append(("dashboards", self.gcp_conn_id, self.impersonation_chain))
        return fakes.http

    def metric_client(self):
        fakes.hooks.append(("monitoring", self.gcp_conn_id, self.impersonation_chain))
        return fakes.metrics

    monkeypatch.setattr(LoggingMetricsHook, "get_conn", get_conn)
    monkeypatch.setattr(MonitoringHook, "_authorize", authorize)  # the real discovery client
    monkeypatch.setattr(MonitoringHook, "get_metric_client", metric_client)
    return fakes


VERTEX_DEPLOYMENT = {
    "target": "vertex", "protocol": "vertex", "project": PROJECT, "region": REGION,
    "predict_url": f"https://{REGION}-aiplatform.googleapis.com/v1/projects/{PROJECT}/"
                   f"locations/{REGION}/endpoints/4242:predict",
    "endpoint": f"projects/424242/locations/{REGION}/endpoints/4242", "endpoint_id": "4242",
    "deployed_model_id": "77", "model_id": "1001", "replicas": 2,
    "impersonation_chain": [SA], "gcp_conn_id": "google_cloud_default",
}


def test_prepare_metrics_makes_schema_log_metrics_and_dashboard(schema, cloud_metrics,
                                                                fake_bq, hook_clients):
    spec = cloud_spec(schema)

    out = pipeline.prepare_metrics(spec, VERTEX_DEPLOYMENT)

    assert out["warehouse"] == WAREHOUSE
    assert out["log_metrics"] == dict.fromkeys(
        ["locust_users", "locust_latency", "locust_num_requests", "locust_num_failures"],
        "created")
    assert out["dashboard"]["action"] == "created"
    assert out["dashboard"]["display_name"] == "caio-bench vertex tiny/v1"
    created = [body for method, _, _, body in cloud_metrics.http.requests if method == "POST"]
    assert 'resource.labels.endpoint_id="4242"' in str(created)
    assert set(fake_bq.tables) == {f"my-project.bench.{t}" for t in
                                   ("runs", "timeseries", "requests", "verdicts",
                                    "comparisons")}
    # every client was made with the run's connection and impersonation chain
    assert {(conn, tuple(chain)) for _, conn, chain in cloud_metrics.hooks} == {
        ("google_cloud_default", (SA,))}
    assert {(h["gcp_conn_id"], tuple(h["impersonation_chain"])) for h in hook_clients} == {
        ("google_cloud_default", (SA,))}
    assert json.loads(json.dumps(out)) == out  # XCom-safe

    again = pipeline.prepare_metrics(spec, VERTEX_DEPLOYMENT)
    assert set(again["log_metrics"].values()) == {"unchanged"}
    assert again["dashboard"]["action"] == "unchanged"


def test_prepare_metrics_of_a_local_run_touches_no_cloud_api(schema, tmp_path, cloud_metrics):
    spec = validate_params({"model_source": "builtin:tiny",
                            "bucket": f"file://{tmp_path}/bucket",
                            "warehouse": f"duckdb://{tmp_path}/wh.duckdb"}, schema,
                           dag_id="caio_load_test", airflow_run_id=AIRFLOW_RUN)
    assert pipeline.prepare_metrics(spec) == {"warehouse": spec.warehouse}
    assert cloud_metrics.hooks == []


# ---------------------------------------------------------------- harvest


def write_client_run(spec, n: int = 40) -> tuple[float, float]:
    """What a load leaves in the bucket: raw client records and load/result.json."""
    layout = spec.layout
    end = time.time() - 5
    start = end - 20
    rows = ["ts,latency_ms,ok,status_code,signature,worker,bytes,error"]
    rows += [f"{start + i * 0.5:.6f},{20 + i % 5}.5,1,200,serving_preprocess,w0,120,"
             for i in range(n)]
    storage.write_text(storage.join(layout.client_requests_dir, "worker-w0-000000.csv"),
                       "\n".join(rows) + "\n")
    storage.write_text(layout.load_result_uri, json.dumps(
        {"status": "success", "reason": "", "started_at": start, "ended_at": end}))
    return start, end


def _runs(fake_bq):
    cols = "status, reason, protocol, replicas, requests"
    return fake_bq.con.execute(f'SELECT {cols} FROM "my-project"."bench"."runs"').fetchall()


def test_harvest_adds_cloud_monitoring_rows(schema, gs_bucket, cloud_metrics, fake_bq,
                                            hook_clients):
    from google.cloud import monitoring_v3
    from test_monitoring_harvest import point, series

    spec = cloud_spec(schema, bucket=gs_bucket)
    start, end = write_client_run(spec)
    # a point for every minute of the aligned window: it is complete at the first read
    ends = range(math.ceil(start / 60) * 60, math.ceil(end / 60) * 60 + 1, 60)
    cloud_metrics.metrics.answers = {
        "aiplatform.googleapis.com/prediction/online/replicas": [
            series({}, *(point(e, double_value=2.0) for e in ends))]}

    out = pipeline.harvest(spec, deployment=VERTEX_DEPLOYMENT)

    assert out["status"] == "success"
    assert _runs(fake_bq) == [("success", "", "vertex", 2, 40)]
    rows = fake_bq.con.execute(
        'SELECT metric, dimension, value FROM "my-project"."bench"."timeseries" '
        "WHERE metric = 'replicas'").fetchall()
    assert rows == [("replicas", "all", 2.0)] * len(ends)
    assert fake_bq.con.execute('SELECT monitoring_coverage FROM "my-project"."bench"."runs"'
                               ).fetchall() == [("complete",)]
    assert fake_bq.rows("requests", spec.run_id) == 40
    requests = cloud_metrics.metrics.requests
    assert requests and all(isinstance(r, monitoring_v3.ListTimeSeriesRequest)
                            for r in requests)
    assert all('resource.labels.endpoint_id="4242"' in r.filter or "test_id" in r.filter
               for r in requests)
    assert storage.list_files(spec.layout.tables_dir, ".parquet") == [
        spec.layout.table_uri(t) for t in ("requests", "runs", "timeseries")]


def test_a_window_monitoring_has_not_covered_yet_degrades_the_run_and_says_so(
        schema, gs_bucket, cloud_metrics, fake_bq, hook_clients):
    from test_monitoring_harvest import point, series

    spec = cloud_spec(schema, bucket=gs_bucket, monitoring_wait_s=0)  # read once
    _, end = write_client_run(spec)
    start = end - 150  # a load of 150 s: a window of three minutes or more
    storage.write_text(spec.layout.load_result_uri, json.dumps(
        {"status": "success", "reason": "", "started_at": start, "ended_at": end}))
    first = math.ceil(start / 60) * 60  # only the window's first minute has arrived
    cloud_metrics.metrics.answers = {
        "aiplatform.googleapis.com/prediction/online/replicas": [
            series({}, point(first, double_value=2.0))]}

    out = pipeline.harvest(spec, deployment=VERTEX_DEPLOYMENT)

    assert out["status"] == "degraded"
    (status, reason, coverage), = fake_bq.con.execute(
        'SELECT status, reason, monitoring_coverage FROM "my-project"."bench"."runs"'
    ).fetchall()
    assert status == "degraded" and coverage.startswith("partial: points to ")
    assert f"series are {coverage}" in reason
    assert "clear this run's harvest task later" in reason and "monitoring_wait_s" in reason
    assert fake_bq.rows("requests", spec.run_id) == 40  # the client records are all there


def test_a_monitoring_error_keeps_the_client_records_and_degrades_the_run(
        schema, gs_bucket, cloud_metrics, fake_bq, hook_clients, caplog):
    spec = cloud_spec(schema, bucket=gs_bucket)
    write_client_run(spec)
    cloud_metrics.metrics.errors = {
        "aiplatform.googleapis.com/prediction/online/replicas": PermissionDenied(
            "Permission monitoring.timeSeries.list denied (or the resource may not exist).")}

    out = pipeline.harvest(spec, deployment=VERTEX_DEPLOYMENT)

    assert out["status"] == "degraded"
    (status, reason, *_), = _runs(fake_bq)
    assert status == "degraded"
    assert reason.startswith("Cloud Monitoring harvest failed")
    assert "roles/monitoring.viewer" in reason and "monitoring.timeSeries.list" in reason
    assert fake_bq.rows("requests", spec.run_id) == 40  # the client records are all there
    assert storage.exists(spec.layout.table_uri("requests"))
    assert "Cloud Monitoring harvest failed" in caplog.text


def test_harvest_after_a_failed_deploy_reads_no_monitoring(schema, gs_bucket, cloud_metrics,
                                                           fake_bq, hook_clients):
    from caio_operators.operators import HarvestMetricsOperator

    spec = cloud_spec(schema, bucket=gs_bucket)
    op = HarvestMetricsOperator(task_id="harvest", spec=spec.to_dict(), deployment="null")

    out = op.execute({})

    assert out["status"] == "failed"
    assert cloud_metrics.metrics.requests == []
    (status, reason, protocol, replicas, requests), = _runs(fake_bq)
    assert (status, protocol, replicas, requests) == ("failed", "vertex", 1, 0)
    assert "did not run" in reason


# ---------------------------------------------------------------- load config


def test_local_runner_with_a_local_target_writes_no_cloud_logging(tmp_path, schema):
    spec = validate_params({"model_source": "builtin:tiny",
                            "bucket": f"file://{tmp_path}/bucket",
                            "warehouse": f"duckdb://{tmp_path}/wh.duckdb"}, schema,
                           dag_id="caio_load_test", airflow_run_id=AIRFLOW_RUN)
    assert pipeline.cloud_logging_config(spec) is None
    assert pipeline.cloud_logging_config(cloud_spec(schema)) == {
        "project": PROJECT, "log_name": "locust", "interval_s": 5}


# ---------------------------------------------------------------- export to gs://


def test_upload_tree_replaces_the_model_and_puts_saved_model_pb_last(gcs, gs_bucket, tmp_path):
    local = tmp_path / "model"
    (local / "variables").mkdir(parents=True)
    (local / "saved_model.pb").write_bytes(b"pb")
    (local / "variables" / "variables.index").write_bytes(b"index")
    (local / "variables" / "variables.data-00000-of-00001").write_bytes(b"data")
    (local / "fingerprint.pb").write_bytes(b"fp")
    target = storage.join(gs_bucket, "models", "tiny", "v1")
    storage.write_text(storage.join(target, "variables", "stale.data"), "old export")
    gcs.clear()

    uris = pipeline.upload_tree(local, target)

    assert uris[-1] == f"{target}/saved_model.pb"
    assert sorted(uris) == storage.list_files(target)
    assert storage.read_bytes(f"{target}/variables/variables.index") == b"index"
    # one whole-object upload per file (uris are in upload order), the stale file deleted
    assert len([line for line in gcs.requests() if line.startswith("POST /upload")]) == 4
    assert f"{target}/variables/stale.data" not in uris


# ---------------------------------------------------------------- the seams (issue 13)


def test_each_cloud_target_maps_its_own_monitoring_ids(schema):
    from caio_operators.metrics.families import MonitoredTarget
    from caio_operators.targets.base import get_target

    # a caip deployment dict as the deploy task returned it before the seams: its AI
    # Platform ids replace the names the user gave
    caip = cloud_spec(schema, target="caip", model_name="resnet", model_version="v1")
    old_caip = {"target": "caip", "protocol": "caip", "predict_url": "https://x/v1:predict",
                "model": "resnet_model", "version": "run_7", "run_id": caip.run_id}
    scope = get_target("caip").monitored_target(caip, old_caip)
    assert isinstance(scope, MonitoredTarget)
    assert (scope.family, scope.project, scope.model, scope.version) == (
        "caip", PROJECT, "resnet_model", "run_7")
    vertex = cloud_spec(schema)
    scope = get_target("vertex").monitored_target(vertex, {
        "target": "vertex", "endpoint": f"projects/{PROJECT}/locations/r/endpoints/4242",
        "deployed_model_id": "77"})
    assert (scope.family, scope.endpoint_id, scope.deployed_model_id) == (
        "vertex", "4242", "77")
    assert get_target("endpoint").monitored_target(vertex, None) is None
    assert get_target("local").monitored_target(vertex, None) is None


def test_each_target_owns_its_default_protocol_and_replicas(schema):
    from caio_operators.targets.base import get_target

    spec = cloud_spec(schema, min_replicas=2, max_replicas=3)
    assert [get_target(name).run_protocol(spec) for name in ("local", "vertex", "caip")] == [
        "caip", "vertex", "caip"]
    assert get_target("endpoint").run_protocol(spec) == spec.protocol
    assert get_target("vertex").run_replicas(spec) == get_target("caip").run_replicas(spec) == 2
    assert get_target("local").run_replicas(spec) == spec.replicas


def test_the_launcher_registry_and_its_policies(tmp_path, schema):
    from caio_operators.loadgen import launcher
    from caio_operators.loadgen.gke import GkeLauncher
    from caio_operators.loadgen.local import LocalLauncher

    assert launcher.launcher_type("local") is LocalLauncher
    assert launcher.launcher_type("gke") is GkeLauncher
    assert (LocalLauncher.in_cloud, GkeLauncher.in_cloud) == (False, True)
    with pytest.raises(ValueError, match=r"unknown load_runner 'ssh'.*gke, local"):
        launcher.launcher_type("ssh")


def test_a_scope_and_its_spec_like_dict_render_the_same_dashboard():
    from caio_operators.metrics.dashboard import dashboard_values
    from caio_operators.metrics.families import monitored_target

    like = {"project": PROJECT, "target": "vertex", "run_id": "r", "endpoint_id": "42"}
    assert dashboard_values(monitored_target(like)) == dashboard_values(like)


def test_a_local_launcher_owns_its_timeout_and_its_work_folder(schema, gs_bucket):
    from caio_operators.loadgen.launch import make_config, write_config
    from caio_operators.loadgen.local import RUN_TIMEOUT_GRACE_S, LocalLauncher

    spec = cloud_spec(schema, bucket=gs_bucket)
    write_config(spec.layout.config_uri, make_config(
        test_id=spec.run_id, predict_url="http://127.0.0.1:1/v1:predict", protocol="caip",
        signature="serving_default", payload_uri=spec.layout.payload_uri,
        output_uri=spec.layout.load_dir, load_shape="constant", users=2, spawn_rate=2,
        duration_s=10))
    launcher = LocalLauncher.for_run(spec, deployment={"pid": 4242})
    assert launcher.timeout_s == spec.duration_s + RUN_TIMEOUT_GRACE_S
    assert launcher.host_watch is not None
    work_dir = Path(launcher.work_dir)
    assert work_dir.is_dir() and launcher.spec.publish_uri == spec.layout.load_dir
    launcher.close()  # nothing ran: the folder goes all the same
    assert not work_dir.exists()
