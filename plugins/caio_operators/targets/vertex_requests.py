"""The Vertex AI requests of the vertex target as pure functions: the prebuilt serving
container of a region, the ``Model`` to upload and the ``DeployedModel`` (machines, replica
bounds, the autoscaling metric). No client, no I/O: tests check them with literal values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CPU_METRIC = "aiplatform.googleapis.com/prediction/online/cpu/utilization"
ACCELERATOR_METRIC = "aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle"
TF_IMAGE = "{registry}/vertex-ai/prediction/tf2-{kind}.{tf}:latest"
DEFAULT_TF_VERSION = "2-15"


def default_serving_image(region: str, accelerator_type: str = "",
                          tf_version: str = DEFAULT_TF_VERSION) -> str:
    """The prebuilt TF2 serving container closest to ``region`` (GPU build if accelerated)."""
    area = (region or "us").split("-")[0]
    registry = {"europe": "europe-docker.pkg.dev", "asia": "asia-docker.pkg.dev",
                "australia": "asia-docker.pkg.dev", "me": "europe-docker.pkg.dev",
                "africa": "europe-docker.pkg.dev"}.get(area, "us-docker.pkg.dev")
    kind = "gpu" if accelerator_type else "cpu"
    return TF_IMAGE.format(registry=registry, kind=kind, tf=tf_version)


def model_spec(*, display_name: str, model_uri: str, image_uri: str,
               labels: Mapping[str, str], description: str = "") -> dict[str, Any]:
    """The ``Model`` to upload: the SavedModel directory served by a TF serving container."""
    return {
        "display_name": display_name,
        "description": description,
        "artifact_uri": model_uri,
        "container_spec": {"image_uri": image_uri},
        "labels": dict(labels),
    }


def deployed_model_spec(*, model: str, display_name: str, machine_type: str,
                        accelerator_type: str = "", accelerator_count: int = 0,
                        min_replicas: int = 1, max_replicas: int = 1,
                        autoscaling_target: int = 60,
                        access_logging: bool = True) -> dict[str, Any]:
    """The ``DeployedModel``: dedicated machines, replica bounds and the scaling metric.

    With an accelerator the replica count follows the accelerator duty cycle, else the
    CPU utilisation; ``autoscaling_target`` is that metric's target in percent.
    """
    machine: dict[str, Any] = {"machine_type": machine_type}
    metric = CPU_METRIC
    if accelerator_type and accelerator_count > 0:
        machine.update(accelerator_type=accelerator_type, accelerator_count=accelerator_count)
        metric = ACCELERATOR_METRIC
    return {
        "model": model,
        "display_name": display_name,
        "dedicated_resources": {
            "machine_spec": machine,
            "min_replica_count": min_replicas,
            "max_replica_count": max_replicas,
            "autoscaling_metric_specs": [{"metric_name": metric, "target": autoscaling_target}],
        },
        # Access logs feed the log-based latency metrics of the metrics stage.
        "enable_access_logging": access_logging,
    }
