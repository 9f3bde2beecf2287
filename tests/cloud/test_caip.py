"""AIPlatformPredictionHook and CaipTarget against a fake AI Platform Prediction REST API.

``FakeMlApi`` is a ``requests.Session``-like transport (``request(method, url, json=,
params=, timeout=)``) that records every call and answers with real ``requests.Response``
objects the way ml.googleapis.com does: JSON error bodies with code/message/status,
404 for missing resources, 409 for existing ones, long-running operations that finish
after a few polls, and versions that go CREATING -> READY (or FAILED).
"""

from __future__ import annotations

import itertools
import json
import re
from urllib.parse import unquote, urlsplit

import pytest
import requests

from caio_operators.hooks.caip import AIPlatformPredictionHook, api_host
from caio_operators.hooks.errors import http_status
from caio_operators.targets.base import DeployError, UndeployError
from caio_operators.targets.caip import CaipTarget, version_resource_name

PROJECT = "bench-proj"
REGION = "us-central1"
RUN = "resnet-v1-manual-2024-05-01"
MODEL_URI = "gs://bench-bucket/models/resnet/v1"
VERSION = "run_resnet_v1_manual_2024_05_01"
HOST = f"https://{REGION}-ml.googleapis.com/v1"
LABELS = {"caio_run": RUN, "caio_model": "resnet", "caio_model_version": "v1",
          "caio_dag": "caio_bench", "created_by": "caio-bench"}

_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           409: "ALREADY_EXISTS", 503: "UNAVAILABLE", 429: "RESOURCE_EXHAUSTED"}


def _response(method: str, url: str, status: int, payload: dict | None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(payload).encode() if payload is not None else b""
    response.headers["Content-Type"] = "application/json"
    response.url = url
    response.request = requests.Request(method, url).prepare()
    return response


def _error(code: int, message: str) -> dict:
    return {"error": {"code": code, "message": message, "status": _STATUS[code]}}


class FakeMlApi:
    """An in-memory AI Platform Prediction project behind the v1 REST routes."""

    def __init__(self, project: str = PROJECT, host: str = HOST, polls: int = 2):
        self.project, self.host, self.polls = project, host, polls
        self.models: dict[str, dict] = {}
        self.versions: dict[str, dict[str, dict]] = {}
        self.operations: dict[str, dict] = {}
        self.calls: list[tuple[str, str, dict | None, dict | None]] = []
        self.deny: dict[tuple[str, str], str] = {}  # (method, path regex) -> 403 message
        self.transient: list[int] = []  # statuses to answer (once each) to operation polls
        self.fail_version: str = ""  # error message a version create ends with
        self.version_polls = 0  # GETs a CREATING version needs before it is READY
        self._ids = itertools.count(1)

    # -- the transport -------------------------------------------------------------

    def request(self, method, url, json=None, params=None, timeout=None, **kwargs):
        assert timeout, "every request needs a timeout"
        self.calls.append((method, url, json, params))
        assert url.startswith(self.host + "/"), url
        path = unquote(urlsplit(url).path)[len("/v1/"):]
        for (deny_method, pattern), message in self.deny.items():
            if deny_method == method and re.fullmatch(pattern, path):
                return _response(method, url, 403, _error(403, message))
        status, payload = self.route(method, path, json, params or {})
        return _response(method, url, status, payload)

    def route(self, method, path, body, params):
        prefix = f"projects/{self.project}/"
        assert path.startswith(prefix), path
        parts = path[len(prefix):].split("/")
        if parts[0] == "operations" and method == "GET":
            return self.get_operation(path)
        if parts[0] != "models":
            return 404, _error(404, f"unknown route {path}")
        if len(parts) == 1 and method == "POST":
            return self.create_model(body)
        model = parts[1]
        if len(parts) == 2:
            return {"GET": self.get_model, "DELETE": self.delete_model}[method](model)
        if len(parts) == 3 and method == "POST":
            return self.create_version(model, body)
        if len(parts) == 3 and method == "GET":
            return self.list_versions(model, params)
        return {"GET": self.get_version, "DELETE": self.delete_version}[method](model, parts[3])

    # -- operations ------------------------------------------------------------------

    def operation(self, kind: str, on_done, error: str = "") -> dict:
        name = f"projects/{self.project}/operations/{kind}-{next(self._ids)}"
        self.operations[name] = {"op": {"name": name, "metadata": {"operationType": kind}},
                                 "polls": 0, "on_done": on_done, "error": error}
        return 200, {"name": name, "metadata": {"operationType": kind}}

    def get_operation(self, name):
        if self.transient:
            code = self.transient.pop(0)
            return code, _error(code, "The service is currently unavailable.")
        entry = self.operations[name]
        entry["polls"] += 1
        if entry["polls"] >= self.polls and not entry["op"].get("done"):
            entry["on_done"]()
            entry["op"]["done"] = True
            if entry["error"]:
                entry["op"]["error"] = {"code": 3, "message": entry["error"]}
            else:
                entry["op"]["response"] = {"@type": "type.googleapis.com/google.protobuf.Empty"}
        return 200, entry["op"]

    # -- models ----------------------------------------------------------------------

    def create_model(self, body):
        if body["name"] in self.models:
            return 409, _error(409, "Field: model.name Error: A model with the same name "
                                    "already exists.")
        self.models[body["name"]] = dict(body)
        self.versions[body["name"]] = {}
        return 200, dict(body)

    def get_model(self, model):
        if model not in self.models:
            return 404, _error(404, "Field: name Error: The specified model resource was "
                                    "not found.")
        return 200, {**self.models[model],
                     "name": f"projects/{self.project}/models/{model}"}

    def delete_model(self, model):
        if model not in self.models:
            return 404, _error(404, f"Model {model} not found.")
        if self.versions[model]:
            return 400, _error(400, "A model with versions cannot be deleted.")
        return self.operation("DELETE_MODEL", lambda: self.models.pop(model))

    # -- versions --------------------------------------------------------------------

    def create_version(self, model, body):
        if model not in self.models:
            return 404, _error(404, f"Model {model} not found.")
        if body["name"] in self.versions[model]:
            return 409, _error(409, "Field: version.name Error: A version with the same "
                                    "name already exists.")
        version = {**body, "state": "CREATING", "isDefault": not self.versions[model]}
        self.versions[model][body["name"]] = version
        error = self.fail_version

        def done():
            version["state"] = "FAILED" if error else "READY"
            if error:
                version["errorMessage"] = error

        return self.operation("CREATE_VERSION", done, error)

    def get_version(self, model, name):
        version = self.versions.get(model, {}).get(name)
        if version is None:
            return 404, _error(404, "Field: name Error: The specified model version was "
                                    "not found.")
        if version["state"] == "CREATING" and self.version_polls:
            self.version_polls -= 1
            if not self.version_polls:
                version["state"] = "READY"
        return 200, {**version, "name": f"projects/{self.project}/models/{model}/versions/{name}"}

    def list_versions(self, model, params):
        if model not in self.models:
            return 404, _error(404, f"Model {model} not found.")
        names = sorted(self.versions[model])
        start = int(params.get("pageToken") or 0)
        size = int(params.get("pageSize") or 100)
        page = names[start:start + size]
        payload: dict = {}
        if page:
            payload["versions"] = [self.versions[model][n] for n in page]
        if start + size < len(names):
            payload["nextPageToken"] = str(start + size)
        return 200, payload

    def delete_version(self, model, name):
        version = self.versions.get(model, {}).get(name)
        if version is None:
            return 404, _error(404, "Field: name Error: The specified model version was "
                                    "not found.")
        version["state"] = "DELETING"
        return self.operation("DELETE_VERSION", lambda: self.versions[model].pop(name))

    # -- assertions helpers ------------------------------------------------------------

    def lines(self) -> list[str]:
        return [f"{m} {u[len(self.host) + 1:]}" for m, u, _, _ in self.calls]

    def body(self, method: str, suffix: str) -> dict:
        found = [b for m, u, b, _ in self.calls if m == method and u.endswith(suffix)]
        assert len(found) == 1, self.lines()
        return found[0]


@pytest.fixture(autouse=True)
def google_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
                       '{"conn_type": "google_cloud_platform", "extra": {"project": "conn-proj"}}')


@pytest.fixture
def api() -> FakeMlApi:
    return FakeMlApi()


@pytest.fixture
def hook(api) -> AIPlatformPredictionHook:
    return AIPlatformPredictionHook(region=REGION, session=api, sleep=lambda s: None)


@pytest.fixture
def target(hook) -> CaipTarget:
    return CaipTarget(hook=hook, poll_initial_s=0.0, sleep=lambda s: None,
                      operation_timeout_s=5)


def deploy(target: CaipTarget, **overrides):
    kwargs = dict(project=PROJECT, region=REGION, model_name="resnet", model_version="v1",
                  model_uri=MODEL_URI, run_id=RUN, dag_id="caio_bench",
                  machine_type="n1-standard-4", min_replicas=1, max_replicas=4,
                  autoscaling_target=65, runtime_version="2.11")
    kwargs.update(overrides)
    return target.deploy(**kwargs)


def version_path(name: str = VERSION) -> str:
    return f"projects/{PROJECT}/models/resnet/versions/{name}"


# -- the hook -----------------------------------------------------------------------------


def test_hook_urls_follow_the_region(api):
    assert api_host("europe-west1") == "https://europe-west1-ml.googleapis.com"
    assert api_host("") == api_host("global") == "https://ml.googleapis.com"
    hook = AIPlatformPredictionHook(region=REGION, session=api)
    api.models["m"] = {"name": "m"}
    hook.get_model(model="m", project_id=PROJECT)
    assert api.calls[-1][:2] == ("GET", f"{HOST}/projects/{PROJECT}/models/m")


def test_hook_maps_http_errors_to_api_core_exceptions(hook, api):
    from google.api_core import exceptions

    with pytest.raises(exceptions.NotFound):
        hook.get_version(model="resnet", version="v", project_id=PROJECT)
    hook.create_model(model={"name": "resnet"}, project_id=PROJECT)
    with pytest.raises(exceptions.Conflict, match="already exists"):
        hook.create_model(model={"name": "resnet"}, project_id=PROJECT)
    api.deny[("GET", r".*/models/resnet")] = "Permission denied on 'ml.models.get'"
    with pytest.raises(exceptions.Forbidden, match=r"ml\.models\.get"):
        hook.get_model(model="resnet", project_id=PROJECT)


def test_hook_deletes_treat_not_found_as_done(hook):
    assert hook.delete_version(model="gone", version="v", project_id=PROJECT) is None
    assert hook.delete_model(model="gone", project_id=PROJECT) is None


def test_hook_lists_every_page_of_versions(hook, api):
    hook.create_model(model={"name": "resnet"}, project_id=PROJECT)
    for i in range(5):
        api.versions["resnet"][f"v{i}"] = {"name": f"v{i}", "state": "READY"}
    names = [v["name"] for v in hook.list_versions(model="resnet", project_id=PROJECT,
                                                   page_size=2)]
    assert names == ["v0", "v1", "v2", "v3", "v4"]
    assert [c[3] for c in api.calls[-3:]] == [
        {"pageSize": 2}, {"pageSize": 2, "pageToken": "2"}, {"pageSize": 2, "pageToken": "4"}]


def test_wait_for_operation_backs_off_and_retries_transient_errors(api):
    delays: list[float] = []
    hook = AIPlatformPredictionHook(region=REGION, session=api, sleep=delays.append)
    api.polls = 3
    api.transient = [503, 429]
    hook.create_model(model={"name": "resnet"}, project_id=PROJECT)
    operation = hook.create_version(model="resnet", version={"name": "v1"}, project_id=PROJECT)

    done = hook.wait_for_operation(operation, initial_delay_s=1.0, max_delay_s=3.0)

    assert done["done"] and "error" not in done
    assert delays == [1.0, 1.5, 2.25, 3.0, 3.0]  # 2 transient answers + 3 polls
    assert api.versions["resnet"]["v1"]["state"] == "READY"


def test_wait_for_operation_raises_the_operation_error(hook, api):
    from google.api_core import exceptions

    api.fail_version = "Create Version failed. Bad model detected with error: no saved_model.pb"
    hook.create_model(model={"name": "resnet"}, project_id=PROJECT)
    operation = hook.create_version(model="resnet", version={"name": "v1"}, project_id=PROJECT)
    with pytest.raises(exceptions.InvalidArgument, match=r"no saved_model\.pb"):
        hook.wait_for_operation(operation, initial_delay_s=0)


def test_wait_for_operation_times_out_with_a_clear_message(api):
    api.polls = 10_000
    hook = AIPlatformPredictionHook(region=REGION, session=api, sleep=lambda s: None)
    hook.create_model(model={"name": "resnet"}, project_id=PROJECT)
    operation = hook.create_version(model="resnet", version={"name": "v1"}, project_id=PROJECT)
    with pytest.raises(TimeoutError, match="did not finish within"):
        hook.wait_for_operation(operation, timeout_s=0.05, initial_delay_s=0.01)


def test_default_session_is_an_authorized_session_with_the_hook_credentials(api, monkeypatch):
    """The real AuthorizedSession adds the bearer token; a fake transport adapter answers."""
    from google.oauth2.credentials import Credentials
    from requests.adapters import BaseAdapter

    seen: list[requests.PreparedRequest] = []

    class Adapter(BaseAdapter):
        def send(self, request, **kwargs):
            seen.append(request)
            status, payload = api.route(request.method,
                                        unquote(urlsplit(request.url).path)[len("/v1/"):],
                                        None, {})
            return _response(request.method, request.url, status, payload)

        def close(self):
            pass

    hook = AIPlatformPredictionHook(region=REGION)
    monkeypatch.setattr(hook, "get_credentials", lambda: Credentials(token="ya29.test-token"))
    session = hook.get_session()
    session.mount("https://", Adapter())
    api.models["resnet"] = {"name": "resnet"}
    api.versions["resnet"] = {}

    assert hook.get_model(model="resnet", project_id=PROJECT)["name"].endswith("/resnet")
    assert seen[0].headers["authorization"] == "Bearer ya29.test-token"
    assert seen[0].url == f"{HOST}/projects/{PROJECT}/models/resnet"


# -- the target ---------------------------------------------------------------------------


def test_deploy_sends_exactly_the_expected_requests(target, api):
    deployment = deploy(target)

    assert api.lines() == [
        f"GET projects/{PROJECT}/models/resnet",
        f"POST projects/{PROJECT}/models",
        f"GET {version_path()}",
        f"POST projects/{PROJECT}/models/resnet/versions",
        f"GET projects/{PROJECT}/operations/CREATE_VERSION-1",
        f"GET projects/{PROJECT}/operations/CREATE_VERSION-1",
        f"GET {version_path()}",
    ]
    assert api.body("POST", "/models") == {
        "name": "resnet", "labels": LABELS, "description": "caio-bench benchmark model",
        "onlinePredictionLogging": True}
    assert api.body("POST", "/versions") == {
        "name": VERSION,
        "description": f"caio-bench run {RUN}: resnet v1",
        "deploymentUri": MODEL_URI,
        "runtimeVersion": "2.11",
        "framework": "TENSORFLOW",
        "pythonVersion": "3.7",
        "machineType": "n1-standard-4",
        "labels": LABELS,
        "autoScaling": {"minNodes": 1, "maxNodes": 4,
                        "metrics": [{"name": "CPU_USAGE", "target": 65}]},
    }
    assert deployment["predict_url"] == (
        f"https://{REGION}-ml.googleapis.com/v1/projects/{PROJECT}/models/resnet"
        f"/versions/{VERSION}:predict")
    assert deployment["base_url"] == f"https://{REGION}-ml.googleapis.com"
    assert (deployment["target"], deployment["protocol"]) == ("caip", "caip")
    assert deployment["model_created"] and deployment["version_created"]
    assert api.versions["resnet"][VERSION]["state"] == "READY"


def test_accelerator_config_and_gpu_duty_cycle_metric(target, api):
    deploy(target, accelerator_type="NVIDIA_TESLA_T4", accelerator_count=2)
    body = api.body("POST", "/versions")
    assert body["acceleratorConfig"] == {"count": "2", "type": "NVIDIA_TESLA_T4"}
    assert body["autoScaling"]["metrics"] == [{"name": "GPU_DUTY_CYCLE", "target": 65}]


def test_global_endpoint_names_the_model_region(api):
    api.host = "https://ml.googleapis.com/v1"
    hook = AIPlatformPredictionHook(region="", session=api, sleep=lambda s: None)
    deployment = deploy(CaipTarget(hook=hook, poll_initial_s=0.0, sleep=lambda s: None),
                        region="")
    assert api.body("POST", "/models")["regions"] == ["us-central1"]
    assert deployment["predict_url"].startswith("https://ml.googleapis.com/v1/projects/")


def test_retry_reuses_a_ready_version(target, api):
    first = deploy(target)
    api.calls.clear()

    second = deploy(target)

    assert api.lines() == [f"GET projects/{PROJECT}/models/resnet", f"GET {version_path()}",
                           f"GET {version_path()}"]
    assert second["predict_url"] == first["predict_url"]
    assert second["model_created"] and second["version_created"]  # still this run's


def test_retry_waits_for_a_creating_version(target, api):
    api.models["resnet"] = {"name": "resnet", "labels": LABELS}
    api.versions["resnet"] = {VERSION: {"name": VERSION, "state": "CREATING", "labels": LABELS}}
    api.version_polls = 3  # READY on the third GET

    deployment = deploy(target)

    assert not [line for line in api.lines() if line.startswith("POST")]
    assert api.lines().count(f"GET {version_path()}") == 3
    assert deployment["version_created"] and deployment["model_created"]


def test_retry_replaces_a_failed_version_of_the_same_run(target, api):
    api.models["resnet"] = {"name": "resnet", "labels": LABELS}
    api.versions["resnet"] = {VERSION: {"name": VERSION, "state": "FAILED", "labels": LABELS,
                                        "errorMessage": "earlier try failed"}}

    deploy(target)

    lines = api.lines()
    assert lines.index(f"DELETE {version_path()}") < lines.index(
        f"POST projects/{PROJECT}/models/resnet/versions")
    assert api.versions["resnet"][VERSION]["state"] == "READY"


def test_model_created_concurrently_is_used_but_not_owned(target, api):
    real_get = api.get_model

    def racing_get(model):  # someone creates the model between our GET and POST
        status, payload = real_get(model)
        api.models.setdefault(model, {"name": model, "labels": {"caio_run": "other"}})
        api.versions.setdefault(model, {})
        return status, payload

    api.get_model = racing_get
    deployment = deploy(target)
    assert not deployment["model_created"] and deployment["version_created"]


def test_undeploy_deletes_the_version_and_the_empty_model_it_created(target, api):
    deployment = deploy(target)
    api.calls.clear()

    target.undeploy(deployment)

    assert api.lines() == [
        f"DELETE {version_path()}",
        f"GET projects/{PROJECT}/operations/DELETE_VERSION-2",
        f"GET projects/{PROJECT}/operations/DELETE_VERSION-2",
        f"GET projects/{PROJECT}/models/resnet/versions",
        f"DELETE projects/{PROJECT}/models/resnet",
        f"GET projects/{PROJECT}/operations/DELETE_MODEL-3",
        f"GET projects/{PROJECT}/operations/DELETE_MODEL-3",
    ]
    assert api.models == {}


def test_undeploy_keeps_a_model_with_other_versions_or_not_created_by_the_run(target, api):
    deployment = deploy(target)
    api.versions["resnet"]["v_prod"] = {"name": "v_prod", "state": "READY"}
    target.undeploy(deployment)
    assert list(api.versions["resnet"]) == ["v_prod"] and "resnet" in api.models

    api.versions["resnet"].clear()
    api.models["resnet"]["labels"] = {"caio_run": "someone-else"}
    deployment = deploy(target, run_id="another-run")
    assert not deployment["model_created"]
    target.undeploy(deployment)
    assert "resnet" in api.models and api.versions["resnet"] == {}


def test_not_found_on_delete_counts_as_success(target, api):
    deployment = deploy(target)
    api.versions["resnet"].clear()
    del api.models["resnet"]

    target.undeploy(deployment)  # no exception

    assert api.lines()[-2:] == [f"DELETE {version_path()}",
                                f"GET projects/{PROJECT}/models/resnet/versions"]


def test_failed_create_operation_cleans_up_and_explains(target, api):
    api.fail_version = ("Create Version failed. Bad model detected with error: "
                        "\"Failed to load model: no SavedModel bundles found\"")

    with pytest.raises(DeployError) as caught:
        deploy(target)

    message = str(caught.value)
    assert http_status(caught.value) == 400
    assert "no SavedModel bundles found" in message and "invalid" in message
    assert f"DELETE {version_path()}" in api.lines()
    assert api.models == {}  # the model this run created is gone too


def test_permission_denied_surfaces_with_the_role_and_cleans_up(target, api):
    api.deny[("POST", r".*/models/resnet/versions")] = (
        "Permission 'ml.versions.create' denied on resource "
        "'projects/bench-proj/models/resnet' (or it may not exist).")

    with pytest.raises(DeployError) as caught:
        deploy(target)

    message = str(caught.value)
    assert "ml.versions.create" in message and "roles/ml.developer" in message
    assert http_status(caught.value) == 403
    assert api.models == {}


def test_undeploy_attempts_every_step_and_reports_all_failures(target, api):
    deployment = deploy(target)
    api.deny[("DELETE", r".*/versions/.*")] = "Permission 'ml.versions.delete' denied"
    api.deny[("GET", r".*/versions")] = "Permission 'ml.versions.list' denied"

    with pytest.raises(UndeployError) as caught:
        target.undeploy(deployment)

    assert "2 cleanup step(s) failed" in str(caught.value)
    assert "ml.versions.delete" in str(caught.value) and "ml.versions.list" in str(caught.value)
    assert "roles/ml.developer" in str(caught.value)


def test_teardown_from_a_stub_derives_names_and_ownership(target, api):
    deploy(target)
    target.undeploy({"target": "caip", "project": PROJECT, "region": REGION, "run_id": RUN,
                     "model_name": "resnet"})
    assert api.models == {}
    assert version_resource_name(RUN) == VERSION


def test_non_gcs_model_uri_is_rejected_before_any_call(target, api):
    with pytest.raises(DeployError, match="gs://"):
        deploy(target, model_uri="file:///tmp/models/resnet/v1")
    assert api.calls == []
