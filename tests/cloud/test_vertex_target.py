"""VertexTarget against the real provider hooks, with fake GAPIC clients underneath.

The fakes stand in for ``ModelServiceClient`` / ``EndpointServiceClient`` (the objects
``get_model_service_client`` / ``get_endpoint_service_client`` return): they validate each
request against the real ``aiplatform_v1`` request types (unknown fields raise), record it,
keep an in-memory project, and answer with real ``google.api_core.operation.Operation``
objects that finish after a few polls, so the provider hook code, the operation polling
and the error mapping all run for real.
"""

from __future__ import annotations

import copy
import itertools
import re

import pytest

aiplatform_v1 = pytest.importorskip("google.cloud.aiplatform_v1")

from google.api_core import exceptions, operation  # noqa: E402
from google.longrunning import operations_pb2  # noqa: E402
from google.protobuf import any_pb2, empty_pb2  # noqa: E402
from google.rpc import status_pb2  # noqa: E402

from caio_operators.hooks.errors import http_status  # noqa: E402
from caio_operators.targets.base import DeployError, UndeployError  # noqa: E402
from caio_operators.targets.vertex import (  # noqa: E402
    ACCELERATOR_METRIC,
    CPU_METRIC,
    VertexTarget,
    default_serving_image,
)

types = aiplatform_v1.types
PROJECT = "bench-proj"
PROJECT_NUMBER = "424242"
REGION = "us-central1"
RUN = "resnet-v1-manual-2024-05-01"
MODEL_URI = "gs://bench-bucket/models/resnet/v1"
LOCATION = f"projects/{PROJECT}/locations/{REGION}"


class FakeVertex:
    """An in-memory Vertex AI location shared by the two fake clients."""

    def __init__(self, polls: int = 2):
        self.polls = polls
        self.models: dict[str, types.Model] = {}
        self.endpoints: dict[str, types.Endpoint] = {}
        self.calls: list[tuple[str, dict]] = []
        self.regions: list[str | None] = []
        self.polled = 0  # operation refreshes (the provider hook's polling really runs)
        self.fail_call: dict[str, Exception] = {}  # method -> raised by the call itself
        self.fail_operation: dict[str, tuple[int, str]] = {}  # method -> LRO error status
        self._ids = itertools.count(1001)

    # -- plumbing --------------------------------------------------------------------

    def record(self, method: str, request: dict, request_type) -> types:
        self.calls.append((method, copy.deepcopy(request)))
        validated = request_type(request)  # the real request type: unknown fields raise
        if method in self.fail_call:
            raise self.fail_call[method]
        return validated

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    def request(self, method: str) -> dict:
        found = [req for name, req in self.calls if name == method]
        assert len(found) == 1, f"{method} called {len(found)} times: {self.methods()}"
        return found[0]

    def operation(self, method: str, result_type, finish) -> operation.Operation:
        """A real LRO that is done after ``polls`` refreshes; ``finish`` applies the effect."""
        name = f"projects/{PROJECT_NUMBER}/locations/{REGION}/operations/{next(self._ids)}"
        state = {"polls": 0}

        def done_pb() -> operations_pb2.Operation:
            if method in self.fail_operation:
                code, message = self.fail_operation[method]
                return operations_pb2.Operation(
                    name=name, done=True, error=status_pb2.Status(code=code, message=message))
            result = finish()
            packed = any_pb2.Any()
            packed.Pack(result if isinstance(result, empty_pb2.Empty)
                        else type(result).pb(result))
            return operations_pb2.Operation(name=name, done=True, response=packed)

        def refresh(retry=None):
            state["polls"] += 1
            self.polled += 1
            if state["polls"] >= self.polls:
                return done_pb()
            return operations_pb2.Operation(name=name, done=False)

        first = done_pb() if self.polls == 0 else operations_pb2.Operation(name=name)
        return operation.Operation(first, refresh, lambda retry=None: None, result_type)

    def new_id(self) -> str:
        return str(next(self._ids))

    @staticmethod
    def matches(labels, display_name: str, flt: str | None) -> bool:
        for key, value in re.findall(r'([\w.]+)="([^"]*)"', flt or ""):
            actual = labels.get(key[len("labels."):]) if key.startswith("labels.") else (
                display_name if key == "display_name" else None)
            if actual != value:
                return False
        return True


class FakeModelServiceClient:
    common_location_path = staticmethod(aiplatform_v1.ModelServiceClient.common_location_path)
    model_path = staticmethod(aiplatform_v1.ModelServiceClient.model_path)

    def __init__(self, api: FakeVertex):
        self.api = api

    def upload_model(self, request, retry=None, timeout=None, metadata=()):
        req = self.api.record("upload_model", request, types.UploadModelRequest)

        def finish():
            model_id = self.api.new_id()
            name = f"projects/{PROJECT_NUMBER}/locations/{REGION}/models/{model_id}"
            model = types.Model(req.model)
            model.name = name
            self.api.models[model_id] = model
            return types.UploadModelResponse(model=name, model_version_id="1")

        return self.api.operation("upload_model", types.UploadModelResponse, finish)

    def list_models(self, request, retry=None, timeout=None, metadata=()):
        req = self.api.record("list_models", request, types.ListModelsRequest)
        return [m for m in self.api.models.values()
                if self.api.matches(m.labels, m.display_name, req.filter)]

    def delete_model(self, request, retry=None, timeout=None, metadata=()):
        req = self.api.record("delete_model", request, types.DeleteModelRequest)
        model_id = req.name.rpartition("/")[-1]
        if model_id not in self.api.models:
            raise exceptions.NotFound(f"Model {req.name} not found.")
        for endpoint in self.api.endpoints.values():
            if any(dm.model.endswith(f"/{model_id}") for dm in endpoint.deployed_models):
                raise exceptions.FailedPrecondition("Model is deployed to an endpoint.")

        def finish():
            del self.api.models[model_id]
            return empty_pb2.Empty()

        return self.api.operation("delete_model", empty_pb2.Empty, finish)


class FakeEndpointServiceClient:
    common_location_path = staticmethod(
        aiplatform_v1.EndpointServiceClient.common_location_path)
    endpoint_path = staticmethod(aiplatform_v1.EndpointServiceClient.endpoint_path)

    def __init__(self, api: FakeVertex):
        self.api = api

    def _endpoint(self, name: str) -> types.Endpoint:
        endpoint_id = name.rpartition("/")[-1]
        if endpoint_id not in self.api.endpoints:
            raise exceptions.NotFound(f"Endpoint {name} not found.")
        return self.api.endpoints[endpoint_id]

    def create_endpoint(self, request, retry=None, timeout=None, metadata=()):
        req = self.api.record("create_endpoint", request, types.CreateEndpointRequest)

        def finish():
            endpoint_id = self.api.new_id()
            endpoint = types.Endpoint(req.endpoint)
            endpoint.name = f"projects/{PROJECT_NUMBER}/locations/{REGION}/endpoints/{endpoint_id}"
            self.api.endpoints[endpoint_id] = endpoint
            return endpoint

        return self.api.operation("create_endpoint", types.Endpoint, finish)

    def list_endpoints(self, request, retry=None, timeout=None, metadata=()):
        req = self.api.record("list_endpoints", request, types.ListEndpointsRequest)
        return [e for e in self.api.endpoints.values()
                if self.api.matches(e.labels, e.display_name, req.filter)]

    def get_endpoint(self, request, retry=None, timeout=None, metadata=()):
        req = self.api.record("get_endpoint", request, types.GetEndpointRequest)
        return types.Endpoint(self._endpoint(req.name))

    def deploy_model(self, request, retry=None, timeout=None, metadata=()):
        req = self.api.record("deploy_model", request, types.DeployModelRequest)
        endpoint = self._endpoint(req.endpoint)

        def finish():
            deployed = types.DeployedModel(req.deployed_model)
            deployed.id = self.api.new_id()
            endpoint.deployed_models.append(deployed)
            split = {(deployed.id if k == "0" else k): v for k, v in req.traffic_split.items()}
            if split:
                endpoint.traffic_split.clear()
                endpoint.traffic_split.update(split)
            return types.DeployModelResponse(deployed_model=deployed)

        return self.api.operation("deploy_model", types.DeployModelResponse, finish)

    def undeploy_model(self, request, retry=None, timeout=None, metadata=()):
        req = self.api.record("undeploy_model", request, types.UndeployModelRequest)
        endpoint = self._endpoint(req.endpoint)
        ids = [dm.id for dm in endpoint.deployed_models]
        if req.deployed_model_id not in ids:
            raise exceptions.NotFound(f"Deployed model {req.deployed_model_id} not found.")
        remaining = [i for i in ids if i != req.deployed_model_id]
        split = dict(req.traffic_split) or {
            k: v for k, v in endpoint.traffic_split.items() if k != req.deployed_model_id}
        if remaining and sum(split.values()) != 100:
            raise exceptions.BadRequest("traffic split of the remaining models must sum to 100")

        def finish():
            kept = [dm for dm in endpoint.deployed_models if dm.id != req.deployed_model_id]
            del endpoint.deployed_models[:]
            endpoint.deployed_models.extend(kept)
            endpoint.traffic_split.clear()
            endpoint.traffic_split.update(split if remaining else {})
            return types.UndeployModelResponse()

        return self.api.operation("undeploy_model", types.UndeployModelResponse, finish)

    def delete_endpoint(self, request, retry=None, timeout=None, metadata=()):
        req = self.api.record("delete_endpoint", request, types.DeleteEndpointRequest)
        endpoint = self._endpoint(req.name)
        if endpoint.deployed_models:
            raise exceptions.FailedPrecondition("Endpoint has deployed models.")

        def finish():
            del self.api.endpoints[req.name.rpartition("/")[-1]]
            return empty_pb2.Empty()

        return self.api.operation("delete_endpoint", empty_pb2.Empty, finish)


@pytest.fixture
def api() -> FakeVertex:
    return FakeVertex(polls=2)


@pytest.fixture
def target(api, monkeypatch):
    """A VertexTarget over the real provider hooks whose GAPIC clients are the fakes."""
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
                       '{"conn_type": "google_cloud_platform", "extra": {"project": "conn-proj"}}')
    from airflow.providers.google.cloud.hooks.vertex_ai.endpoint_service import (
        EndpointServiceHook,
    )
    from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook

    model_hook, endpoint_hook = ModelServiceHook(), EndpointServiceHook()

    def model_client(region=None):
        api.regions.append(region)
        return FakeModelServiceClient(api)

    def endpoint_client(region=None):
        api.regions.append(region)
        return FakeEndpointServiceClient(api)

    model_hook.get_model_service_client = model_client
    endpoint_hook.get_endpoint_service_client = endpoint_client
    return VertexTarget(model_hook=model_hook, endpoint_hook=endpoint_hook,
                        poll_initial_s=0.001, operation_timeout_s=10)


def deploy(target: VertexTarget, **overrides):
    kwargs = dict(project=PROJECT, region=REGION, model_name="resnet", model_version="v1",
                  model_uri=MODEL_URI, run_id=RUN, dag_id="caio_bench",
                  machine_type="n1-standard-4", min_replicas=1, max_replicas=3,
                  autoscaling_target=70)
    kwargs.update(overrides)
    return target.deploy(**kwargs)


LABELS = {"caio_run": RUN, "caio_model": "resnet", "caio_model_version": "v1",
          "caio_dag": "caio_bench", "created_by": "caio-bench"}


def test_deploy_sends_exactly_the_expected_requests(target, api):
    deployment = deploy(target)

    assert api.methods() == ["list_models", "upload_model", "list_endpoints",
                             "create_endpoint", "get_endpoint", "deploy_model"]
    assert set(api.regions) == {REGION}
    assert api.request("list_models")["filter"] == (
        f'labels.caio_run="{RUN}" AND display_name="caio-resnet-v1"')
    assert api.request("upload_model") == {"parent": LOCATION, "model": {
        "display_name": "caio-resnet-v1",
        "description": f"caio-bench run {RUN}: resnet v1",
        "artifact_uri": MODEL_URI,
        "container_spec": {
            "image_uri": "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"},
        "labels": LABELS,
    }}
    assert api.request("create_endpoint") == {
        "parent": LOCATION, "endpoint": {"display_name": f"caio-{RUN}", "labels": LABELS},
        "endpoint_id": None}
    model_id, endpoint_id = deployment["model_id"], deployment["endpoint_id"]
    assert api.request("deploy_model") == {
        "endpoint": f"{LOCATION}/endpoints/{endpoint_id}",
        "deployed_model": {
            "model": f"projects/{PROJECT_NUMBER}/locations/{REGION}/models/{model_id}",
            "display_name": f"caio-{RUN}",
            "dedicated_resources": {
                "machine_spec": {"machine_type": "n1-standard-4"},
                "min_replica_count": 1,
                "max_replica_count": 3,
                "autoscaling_metric_specs": [{"metric_name": CPU_METRIC, "target": 70}],
            },
            "enable_access_logging": True,
        },
        "traffic_split": {"0": 100},
    }
    assert deployment["predict_url"] == (
        f"https://{REGION}-aiplatform.googleapis.com/v1/projects/{PROJECT}/locations/{REGION}"
        f"/endpoints/{endpoint_id}:predict")
    assert deployment["base_url"] == f"https://{REGION}-aiplatform.googleapis.com"
    assert (deployment["target"], deployment["protocol"]) == ("vertex", "vertex")
    assert deployment["model_created"] and deployment["endpoint_created"]
    served = api.endpoints[endpoint_id]
    assert [dm.id for dm in served.deployed_models] == [deployment["deployed_model_id"]]
    assert dict(served.traffic_split) == {deployment["deployed_model_id"]: 100}
    assert api.polled == 3 * api.polls  # three LROs, each polled until done


def test_accelerator_uses_gpu_image_and_duty_cycle_metric(target, api):
    deployment = deploy(target, region="europe-west4", accelerator_type="NVIDIA_TESLA_T4",
                        accelerator_count=1, machine_type="n1-standard-8")

    image = api.request("upload_model")["model"]["container_spec"]["image_uri"]
    assert image == "europe-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-15:latest"
    resources = api.request("deploy_model")["deployed_model"]["dedicated_resources"]
    assert resources["machine_spec"] == {"machine_type": "n1-standard-8",
                                         "accelerator_type": "NVIDIA_TESLA_T4",
                                         "accelerator_count": 1}
    assert resources["autoscaling_metric_specs"] == [
        {"metric_name": ACCELERATOR_METRIC, "target": 70}]
    assert deployment["predict_url"].startswith("https://europe-west4-aiplatform.googleapis.com/")


def test_explicit_serving_image_is_used(target, api):
    deploy(target, serving_container_image="us-docker.pkg.dev/me/serve:1")
    assert api.request("upload_model")["model"]["container_spec"] == {
        "image_uri": "us-docker.pkg.dev/me/serve:1"}
    assert default_serving_image("asia-east1") == (
        "asia-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest")


def test_retry_reattaches_instead_of_duplicating(target, api):
    first = deploy(target)
    api.calls.clear()

    second = deploy(target)

    assert api.methods() == ["list_models", "list_endpoints", "get_endpoint"]
    assert len(api.models) == 1 and len(api.endpoints) == 1
    for key in ("model_id", "endpoint_id", "deployed_model_id", "predict_url"):
        assert second[key] == first[key]
    assert second["model_created"] and second["endpoint_created"]


def test_retry_after_partial_deploy_finishes_the_missing_step(target, api):
    api.fail_call["deploy_model"] = exceptions.ServiceUnavailable("backend unavailable")
    with pytest.raises(DeployError):
        deploy(target)
    del api.fail_call["deploy_model"]
    # The failed try cleaned up after itself, so the retry starts from scratch.
    assert api.models == {} and api.endpoints == {}

    deployment = deploy(target)
    assert len(api.models) == 1 and len(api.endpoints) == 1
    assert deployment["deployed_model_id"]


def test_undeploy_deletes_what_the_run_created(target, api):
    deployment = deploy(target)
    api.calls.clear()

    target.undeploy(deployment)

    assert api.methods() == ["get_endpoint", "undeploy_model", "delete_endpoint",
                             "delete_model"]
    assert api.request("undeploy_model") == {
        "endpoint": f"{LOCATION}/endpoints/{deployment['endpoint_id']}",
        "deployed_model_id": deployment["deployed_model_id"], "traffic_split": None}
    assert api.request("delete_endpoint") == {
        "name": f"{LOCATION}/endpoints/{deployment['endpoint_id']}"}
    assert api.request("delete_model") == {"name": f"{LOCATION}/models/{deployment['model_id']}"}
    assert api.models == {} and api.endpoints == {}


def test_existing_endpoint_is_kept_and_its_traffic_restored(target, api):
    other = types.Endpoint(
        name=f"projects/{PROJECT_NUMBER}/locations/{REGION}/endpoints/77", display_name="prod",
        deployed_models=[types.DeployedModel(id="555", model=f"{LOCATION}/models/9")],
        traffic_split={"555": 100})
    api.endpoints["77"] = other

    deployment = deploy(target, endpoint=f"projects/{PROJECT}/locations/{REGION}/endpoints/77")

    assert "create_endpoint" not in api.methods()
    assert deployment["endpoint_id"] == "77" and not deployment["endpoint_created"]
    assert deployment["previous_traffic_split"] == {"555": 100}
    api.calls.clear()

    target.undeploy(deployment)

    assert api.methods() == ["get_endpoint", "undeploy_model", "delete_model"]
    assert api.request("undeploy_model")["traffic_split"] == {"555": 100}
    assert [dm.id for dm in api.endpoints["77"].deployed_models] == ["555"]
    assert dict(api.endpoints["77"].traffic_split) == {"555": 100}


def test_not_found_on_delete_counts_as_success(target, api):
    deployment = deploy(target)
    api.endpoints.clear()
    api.models.clear()

    target.undeploy(deployment)  # no exception: everything is already gone

    assert api.methods()[-3:] == ["get_endpoint", "delete_endpoint", "delete_model"]


def test_undeploy_attempts_every_step_and_reports_all_failures(target, api):
    deployment = deploy(target)
    api.fail_call["delete_endpoint"] = exceptions.PermissionDenied(
        "Permission 'aiplatform.endpoints.delete' denied on resource")
    api.fail_call["delete_model"] = exceptions.InternalServerError("backend error")

    with pytest.raises(UndeployError) as caught:
        target.undeploy(deployment)

    assert "2 cleanup step(s) failed" in str(caught.value)
    message = str(caught.value)
    assert "aiplatform.endpoints.delete" in message and "roles/aiplatform.user" in message
    assert "backend error" in message
    assert api.methods()[-3:] == ["undeploy_model", "delete_endpoint", "delete_model"]


def test_failed_deploy_operation_cleans_up_and_names_the_quota(target, api):
    api.fail_operation["deploy_model"] = (
        8, "The following quota metrics exceed quota limits: "
           "aiplatform.googleapis.com/custom_model_serving_cpus")

    with pytest.raises(DeployError) as caught:
        deploy(target)

    err = caught.value
    assert http_status(err) == 429
    assert "custom_model_serving_cpus" in str(err) and "quota" in str(err)
    assert "has been deleted again" in str(err)
    assert api.methods()[-3:] == ["get_endpoint", "delete_endpoint", "delete_model"]
    assert api.models == {} and api.endpoints == {}


def test_failed_cleanup_after_a_failed_deploy_is_reported_too(target, api):
    api.fail_operation["deploy_model"] = (13, "internal error while deploying")
    api.fail_call["delete_model"] = exceptions.PermissionDenied(
        "Permission 'aiplatform.models.delete' denied")

    with pytest.raises(DeployError) as caught:
        deploy(target)

    message = str(caught.value)
    assert "internal error while deploying" in message
    assert "Cleaning up after it also failed" in message
    assert "aiplatform.models.delete" in message and "roles/aiplatform.user" in message
    assert api.endpoints == {} and len(api.models) == 1  # only the model is left


def test_permission_denied_surfaces_with_the_role(target, api):
    api.fail_call["upload_model"] = exceptions.PermissionDenied(
        "Permission 'aiplatform.models.upload' denied on resource "
        f"'//aiplatform.googleapis.com/{LOCATION}' (or it may not exist).")

    with pytest.raises(DeployError) as caught:
        deploy(target)

    message = str(caught.value)
    assert "aiplatform.models.upload" in message
    assert "roles/aiplatform.user" in message
    assert http_status(caught.value) == 403
    assert "create_endpoint" not in api.methods()  # stopped at the first failure
    assert api.models == {} and api.endpoints == {}


def test_teardown_from_a_stub_finds_resources_by_run_label(target, api):
    deploy(target)
    foreign = types.Model(name=f"{LOCATION}/models/5", display_name="x",
                          labels={"caio_run": "another-run"})
    api.models["5"] = foreign

    target.undeploy({"target": "vertex", "project": PROJECT, "region": REGION, "run_id": RUN})

    assert api.endpoints == {}
    assert list(api.models) == ["5"]  # another run's model is left alone


def test_non_gcs_model_uri_is_rejected_before_any_call(target, api):
    with pytest.raises(DeployError, match="gs://"):
        deploy(target, model_uri="file:///tmp/models/resnet/v1")
    assert api.calls == []
