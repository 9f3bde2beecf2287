"""What the two Google Cloud targets (``vertex``, ``caip``) share: the labels every resource
of a run carries, the fail-fast argument check, the cleanup wording of a failed deploy, the
run params both map the same way, and the Cloud Monitoring scope of a deployment.

Each cloud target module adds only what differs (its resources, its own params, its
Monitoring ids); nothing here imports a Google client.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from caio_operators.targets.base import DeployError, UndeployError

if TYPE_CHECKING:
    from caio_operators.metrics.families import MonitoredTarget

RUN_LABEL = "caio_run"


def label_value(value: object) -> str:
    """``value`` as a Google label value: ``[a-z0-9_-]``, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]+", "-", str(value).lower()).strip("-")[:63]


def run_labels(run_id: str, *, model_name: str = "", model_version: str = "",
               dag_id: str = "") -> dict[str, str]:
    """Labels put on every cloud resource of a run; ``caio_run`` is how retries find them."""
    labels = {RUN_LABEL: label_value(run_id), "caio_model": label_value(model_name),
              "caio_model_version": label_value(model_version), "caio_dag": label_value(dag_id),
              "created_by": "caio-bench"}
    return {k: v for k, v in labels.items() if v}


def check_cloud_args(target: str, *, project: str, model_uri: str, run_id: str) -> None:
    """Fail fast, before any API call, on arguments a cloud target cannot work with."""
    if not project:
        raise DeployError(f"the {target} target needs a Google Cloud project; set `project`")
    if not str(model_uri).startswith("gs://"):
        raise DeployError(f"the {target} target serves models from Cloud Storage; model_uri "
                          f"{model_uri!r} is not a gs:// URI (set bucket=gs://...)")
    if not label_value(run_id):
        raise DeployError(f"the {target} target needs a run_id to label what it creates")


def cleanup_note(cleanup: Callable[[], None]) -> str:
    """Run the cleanup of a failed deploy; a sentence for the error message saying how it went."""
    try:
        cleanup()
    except UndeployError as err:
        return f" Cleaning up after it also failed: {err}"
    return " What this run had created has been deleted again."


def undeploy_error(what: str, errors: list[str]) -> UndeployError:
    return UndeployError(f"{what}: {len(errors)} cleanup step(s) failed, delete the leftovers "
                         f"by hand if a retry does not: " + " | ".join(errors))


def impersonation_list(chain: str | Sequence[str] | None) -> list[str] | None:
    """A comma-separated string or a list of service accounts, as a list (None if empty)."""
    if not chain:
        return None
    items = chain.split(",") if isinstance(chain, str) else list(chain)
    cleaned = [item.strip() for item in items if item and item.strip()]
    return cleaned or None


def cloud_spec_kwargs(spec: Any) -> dict[str, Any]:
    """The ``deploy`` keyword arguments both cloud targets take from a RunSpec-like object
    (where it runs, what it serves, the machines and replicas, the connection)."""
    return {
        "project": spec.project, "region": spec.region, "model_name": spec.model_name,
        "model_version": spec.model_version, "model_uri": spec.model_uri,
        "run_id": spec.run_id, "dag_id": getattr(spec, "dag_id", ""),
        "machine_type": spec.machine_type, "accelerator_type": spec.accelerator_type,
        "accelerator_count": spec.accelerator_count, "min_replicas": spec.min_replicas,
        "max_replicas": spec.max_replicas, "autoscaling_target": spec.autoscaling_target,
        "gcp_conn_id": spec.gcp_conn_id, "impersonation_chain": spec.impersonation_chain,
    }


def teardown_stub(spec: Any) -> dict[str, Any]:
    """What a cloud target's undeploy needs to find a run's resources by their labels
    (``caio_run`` = run id) when the deploy task returned nothing (killed, timed out)."""
    return {"target": spec.target, "project": spec.project, "region": spec.region,
            "run_id": spec.run_id, "model_name": spec.model_name,
            "model_version": spec.model_version, "gcp_conn_id": spec.gcp_conn_id,
            "impersonation_chain": spec.impersonation}


def monitored_scope(spec: Any, deployment: Mapping[str, Any] | None,
                    **ids: str) -> MonitoredTarget:
    """The Cloud Monitoring scope of a run's deployment: the RunSpec's fields, overridden by
    the deploy output's (``endpoint_id``, ``deployed_model_id``, ...), then by ``ids`` (a
    target's own Monitoring ids). Raises ValueError when an id Monitoring needs is missing."""
    from caio_operators.metrics.families import monitored_target

    return monitored_target({**spec.to_dict(), **dict(deployment or {}), **ids})


class CloudTarget:
    """What Vertex AI and AI Platform targets share as ``Target``s: they start at
    ``min_replicas``, undeploy finds a killed deploy's resources by the run's labels, the
    Monitoring scope is the deploy output's, and nothing of the server outlives teardown."""

    def run_replicas(self, spec: Any) -> int:
        return int(spec.min_replicas)

    def monitored_target(self, spec: Any, deployment: Mapping[str, Any] | None
                         ) -> MonitoredTarget:
        """The deployment's ids from the deploy output (Vertex: ``endpoint_id``,
        ``deployed_model_id``)."""
        return monitored_scope(spec, deployment)

    def teardown_stub(self, spec: Any) -> dict[str, Any]:
        """The run's labels, by which undeploy finds what a killed deploy created."""
        return teardown_stub(spec)

    def server_problem(self, deployment: Mapping[str, Any]) -> None:
        """None: nothing of the server is watched past its teardown."""
        return None
