"""EndpointTarget: benchmark an endpoint that already serves; nothing is deployed or removed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from caio_operators.targets.base import DeployError, Deployment
from caio_operators.targets.protocols import (
    DEFAULT_LOCATION,
    ProtocolError,
    check_base_url,
    check_protocol,
    predict_url,
)

NAME = "endpoint"


class EndpointTarget:
    """An existing endpoint, given by URL and protocol."""

    name = NAME

    def run_protocol(self, spec: Any) -> str:
        return str(spec.protocol)

    def run_replicas(self, spec: Any) -> int:
        return int(spec.replicas)

    def monitored_target(self, spec: Any, deployment: Mapping[str, Any] | None) -> None:
        """None: an endpoint's server-side metrics are not read (it is not ours)."""
        return None

    def teardown_stub(self, spec: Any) -> None:
        """None: without a deployment there is nothing of this target to find."""
        return None

    def server_problem(self, deployment: Mapping[str, Any]) -> None:
        """None: nothing of the server is watched past its teardown."""
        return None

    def deploy_run(self, spec: Any) -> Deployment:
        """``deploy`` with a run's ``endpoint_url`` and ``protocol``."""
        return self.deploy(url=spec.endpoint_url, protocol=spec.protocol)

    def deploy(
        self,
        *,
        url: str,
        protocol: str,
        model_name: str = "",
        model_version: str = "",
        project: str = "local",
        location: str = DEFAULT_LOCATION,
        endpoint: str = "",
    ) -> Deployment:
        """The Deployment of the endpoint at ``url``; no request is sent.

        ``url`` is the full predict URL (``...:predict``) as given; a bare
        ``http(s)://host[:port]`` is completed with the ``protocol``'s predict route from
        ``model_name`` / ``model_version`` / ``project`` / ``location`` / ``endpoint``.
        """
        try:
            check_protocol(protocol)
            check_base_url(url)
        except ProtocolError as exc:
            raise DeployError(f"endpoint target: {exc}") from None
        parts = urlsplit(url)
        base_url = f"{parts.scheme}://{parts.netloc}"
        if parts.path.strip("/"):
            full_url = url
        else:
            try:
                full_url = predict_url(protocol, base_url, project=project, model=model_name,
                                       version=model_version or None, location=location,
                                       endpoint=endpoint)
            except ProtocolError as exc:
                raise DeployError(
                    f"endpoint target: {url!r} has no path, so the {protocol} predict route "
                    f"is built from the deploy arguments, but {exc}") from None
        health_url = ""
        if protocol == "tfserving" and full_url.endswith(":predict"):
            health_url = full_url[: -len(":predict")]  # TF Serving's model status route
        return Deployment(target=NAME, protocol=protocol, predict_url=full_url,
                          base_url=base_url, health_url=health_url, project=project,
                          model_name=model_name, model_version=model_version)

    def undeploy(self, deployment: Mapping[str, Any]) -> None:
        """Nothing was deployed, so nothing is removed."""
