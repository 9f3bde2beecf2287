"""hooks.gke: the GKE connection and Kubernetes API error messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

kubernetes = pytest.importorskip("kubernetes")

from google.api_core import exceptions  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from caio_operators.hooks import gke  # noqa: E402
from caio_operators.hooks.errors import GoogleApiError  # noqa: E402


class FakeClusterHook:
    """Stands in for the provider's GKEHook: ``get_cluster`` answers with a real
    ``container_v1.Cluster`` or raises."""

    def __init__(self, cluster: Any = None, error: Exception | None = None):
        self.cluster = cluster
        self.error = error
        self.calls: list[dict] = []

    def get_cluster(self, **kwargs):
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return self.cluster


def api_exception(status: int, reason: str, message: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return exc


def test_cluster_lookup_denied_is_explained():
    hook = FakeClusterHook(error=exceptions.PermissionDenied(
        "Required 'container.clusters.get' permission for "
        "'projects/p/locations/us-central1/clusters/load'."))
    with pytest.raises(GoogleApiError) as caught:
        gke.cluster_endpoint(hook, project_id="p", cluster="load")
    assert hook.calls == [{"name": "load", "project_id": "p"}]
    message = str(caught.value)
    assert "HTTP 403" in message and "container.clusters.get" in message
    assert "roles/container.developer" in message


def test_cluster_endpoint_public_private_and_dns():
    container_v1 = pytest.importorskip("google.cloud.container_v1")
    cluster = container_v1.Cluster(
        name="load", endpoint="34.1.2.3",
        master_auth=container_v1.MasterAuth(cluster_ca_certificate="LS0tQ0E="),
        private_cluster_config=container_v1.PrivateClusterConfig(private_endpoint="10.0.0.2"),
        control_plane_endpoints_config=container_v1.ControlPlaneEndpointsConfig(
            dns_endpoint_config=container_v1.ControlPlaneEndpointsConfig.DNSEndpointConfig(
                endpoint="gke-123.us-central1.gke.goog")))
    hook = FakeClusterHook(cluster)
    assert gke.cluster_endpoint(hook, project_id="p", cluster="load") == (
        "https://34.1.2.3", "LS0tQ0E=")
    assert gke.cluster_endpoint(hook, project_id="p", cluster="load",
                                use_internal_ip=True)[0] == "https://10.0.0.2"
    assert gke.cluster_endpoint(hook, project_id="p", cluster="load",
                                use_dns_endpoint=True)[0] == "https://gke-123.us-central1.gke.goog"


@pytest.mark.parametrize(("status", "reason", "message", "expected"), [
    (404, "Not Found", 'namespaces "load" not found', "Create namespace load"),
    (401, "Unauthorized", "Unauthorized", "rejected the credentials"),
    (422, "Unprocessable Entity", 'Job.batch "x" is invalid: spec.template: Required value',
     "rejected as invalid"),
    (503, "Service Unavailable", "etcd leader changed", "retry the task"),
])
def test_explain_api_error(status, reason, message, expected):
    text = gke.explain_api_error(api_exception(status, reason, message), "create Job x", "load")
    assert text.startswith(f"create Job x failed with HTTP {status}: {message}")
    assert expected in text
    assert gke.api_status(api_exception(status, reason, message)) == status


def test_api_message_falls_back_to_the_reason():
    assert gke.api_message(ApiException(status=500, reason="Internal Server Error")) == (
        "Internal Server Error")
    assert gke.api_status(ValueError("not an API error")) is None
