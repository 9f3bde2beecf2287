"""The deploy-target port: what every target offers, and the registry that picks one.

A target turns a model URI into something that answers predict requests and back:
``deploy(**kwargs) -> Deployment`` (keyword arguments are target-specific; each target
module documents them), ``deploy_run(spec)``, the same from a run's RunSpec (the target maps
its own params and quirks), and ``undeploy(deployment)``, which is idempotent (gone already
counts as success). ``run_protocol``, ``run_replicas``, ``monitored_target``,
``teardown_stub`` and ``server_problem`` answer for a run what only the target knows (its
default protocol, its replica count, its Cloud Monitoring ids, how to find what a killed
deploy left, what its teardown found), so no caller branches on the target's name. The
Deployment is a plain JSON-able dict, so it travels through XCom to the load and teardown
tasks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NotRequired, Protocol, TypedDict, runtime_checkable

if TYPE_CHECKING:
    from caio_operators.metrics.families import MonitoredTarget


class DeployError(RuntimeError):
    """A deployment could not be made; the message says what failed and where to look."""


class UndeployError(RuntimeError):
    """A deployment could not be fully removed; the message names what is left."""


class Deployment(TypedDict):
    target: str  # registry name of the target that made it (undeploy dispatches on it)
    protocol: str  # "caip" | "vertex" | "tfserving": the request/response convention
    predict_url: str
    base_url: str
    health_url: str  # "" when the target has no unauthenticated health route
    project: NotRequired[str]
    model_name: NotRequired[str]
    model_version: NotRequired[str]


class LocalDeployment(Deployment):
    pid: int  # the supervisor; its process group holds the replicas
    pid_create_time: float  # tells our supervisor from a process that reused its pid
    host: str
    port: int
    replicas: int
    replica_pids: list[int]
    model_uri: str
    server_dir: str
    records_dir: str
    samples_dir: str
    ready_file: str
    log_path: str
    deadline: float  # epoch seconds after which the server stops by itself
    hostname: str  # undeploy must run on this machine


@runtime_checkable
class Target(Protocol):
    name: str

    @property
    def deploy(self) -> Callable[..., Mapping[str, Any]]:
        """``deploy(**kwargs)``: the keyword arguments are the target's own (its module's
        docs say which)."""
        ...

    def deploy_run(self, spec: Any) -> Mapping[str, Any]:
        """``deploy`` with a run's params: the target maps the RunSpec itself (its own
        params, URL and protocol quirks), so the pipeline has no per-target branch."""
        ...

    def undeploy(self, deployment: Mapping[str, Any]) -> None: ...

    def run_protocol(self, spec: Any) -> str:
        """The run's protocol when no deploy output says (the deploy task failed)."""
        ...

    def run_replicas(self, spec: Any) -> int:
        """The run's replica count when no deploy output says (its starting count)."""
        ...

    def teardown_stub(self, spec: Any) -> Mapping[str, Any] | None:
        """What ``undeploy`` needs to clean up a run whose deploy task returned nothing
        (killed, timed out): a cloud target finds the run's resources by their labels;
        None when there is nothing to find."""
        ...

    def server_problem(self, deployment: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(status, reason)`` when the deployment was found broken at its teardown
        (``failed``: the server had died; ``degraded``: some replicas had), else None."""
        ...

    def monitored_target(self, spec: Any, deployment: Mapping[str, Any] | None
                         ) -> MonitoredTarget | None:
        """Where Cloud Monitoring keeps the deployment's server-side series (the target maps
        its own Monitoring ids from the RunSpec and the deploy output); None when it has
        none. Raises ValueError when the ids Monitoring needs are missing."""
        ...


_TARGETS: dict[str, str] = {
    "local": "caio_operators.targets.local:LocalTarget",
    "endpoint": "caio_operators.targets.endpoint:EndpointTarget",
    "vertex": "caio_operators.targets.vertex:VertexTarget",
    "caip": "caio_operators.targets.caip:CaipTarget",
}


def register_target(name: str, factory: str) -> None:
    """Make ``get_target(name)`` build ``factory`` ("module:attribute", imported lazily)."""
    _TARGETS[name] = factory


def known_targets() -> tuple[str, ...]:
    return tuple(sorted(_TARGETS))


def get_target(name: str, **options: Any) -> Target:
    """A new target called ``name``, built with ``options``; heavy imports happen here."""
    factory = _TARGETS.get(name)
    if factory is None:
        raise ValueError(f"unknown deploy target {name!r}; known targets: "
                         f"{', '.join(known_targets())}")
    module_name, _, attribute = factory.partition(":")
    target_class = getattr(importlib.import_module(module_name), attribute)
    return target_class(**options)


def undeploy(deployment: Mapping[str, Any]) -> None:
    """Undo ``deployment`` with the target that made it."""
    get_target(str(deployment.get("target", ""))).undeploy(deployment)

