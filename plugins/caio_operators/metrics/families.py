"""Where a served model's metrics live in Cloud Monitoring: one family per serving product.

AI Platform Prediction (``caip``) reports on the monitored resource ``cloudml_model_version``
(labels ``model_id``, ``version_id``); Vertex AI (``vertex``) on
``aiplatform.googleapis.com/Endpoint`` (label ``endpoint_id``; metric label
``deployed_model_id``). The dashboard and the harvest both take their metric types and
resource filters from here, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServingMetrics:
    """The Cloud Monitoring metric types of one serving product."""

    family: str
    resource_type: str
    replicas: str
    cpu: str                     # fraction of the replica's CPU in use (1.0 = one core busy)
    memory: str                  # bytes
    accelerator_duty_cycle: str  # fraction of time the accelerators were busy
    prediction_count: str        # DELTA count of predictions (instances)
    response_count: str          # DELTA count of responses, metric label response_code
    latencies: str               # DELTA distribution, metric label latency_type
    latency_unit: str            # unit of ``latencies``: "us" or "ms"
    target_replicas: str = ""    # GAUGE: replicas the autoscaler wants (sampled each minute)

    @property
    def latency_to_ms(self) -> float:
        return {"us": 1e-3, "ms": 1.0}[self.latency_unit]

    def metric_types(self) -> tuple[str, ...]:
        return (self.replicas, self.cpu, self.memory, self.accelerator_duty_cycle,
                self.prediction_count, self.response_count, self.latencies)


CAIP = ServingMetrics(
    family="caip",
    resource_type="cloudml_model_version",
    replicas="ml.googleapis.com/prediction/online/replicas",
    target_replicas="ml.googleapis.com/prediction/online/target_replicas",
    cpu="ml.googleapis.com/prediction/online/cpu/utilization",
    memory="ml.googleapis.com/prediction/online/memory/bytes_used",
    accelerator_duty_cycle="ml.googleapis.com/prediction/online/accelerator/duty_cycle",
    prediction_count="ml.googleapis.com/prediction/prediction_count",
    response_count="ml.googleapis.com/prediction/response_count",
    latencies="ml.googleapis.com/prediction/latencies",
    latency_unit="us",
)

VERTEX = ServingMetrics(
    family="vertex",
    resource_type="aiplatform.googleapis.com/Endpoint",
    replicas="aiplatform.googleapis.com/prediction/online/replicas",
    target_replicas="aiplatform.googleapis.com/prediction/online/target_replicas",
    cpu="aiplatform.googleapis.com/prediction/online/cpu/utilization",
    memory="aiplatform.googleapis.com/prediction/online/memory/bytes_used",
    accelerator_duty_cycle="aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle",
    prediction_count="aiplatform.googleapis.com/prediction/online/prediction_count",
    response_count="aiplatform.googleapis.com/prediction/online/response_count",
    latencies="aiplatform.googleapis.com/prediction/online/prediction_latencies",
    latency_unit="ms",
)

FAMILIES: dict[str, ServingMetrics] = {"caip": CAIP, "vertex": VERTEX}


def quote(value: str) -> str:
    """``value`` as a Monitoring filter string literal."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def field(spec_like: Any, name: str, default: Any = "") -> Any:
    """``spec_like[name]`` or ``spec_like.name`` (a RunSpec, its dict, or deploy output)."""
    if isinstance(spec_like, Mapping):
        value = spec_like.get(name, default)
    else:
        value = getattr(spec_like, name, default)
    return default if value is None else value


@dataclass(frozen=True)
class MonitoredTarget:
    """One deployment to read metrics for (and the run whose Locust logs to read)."""

    project: str
    metrics: ServingMetrics
    run_id: str = ""
    model: str = ""
    version: str = ""
    endpoint_id: str = ""
    deployed_model_id: str = ""

    @property
    def family(self) -> str:
        return self.metrics.family

    @property
    def label(self) -> str:
        """Human name of the deployment, e.g. ``resnet101/v1``."""
        if self.model and self.version:
            return f"{self.model}/{self.version}"
        return f"endpoint {self.endpoint_id}"

    def resource_filter(self) -> str:
        """Monitoring filter terms selecting this deployment's series."""
        terms = [f"resource.type={quote(self.metrics.resource_type)}"]
        if self.family == "caip":
            terms += [f"resource.labels.model_id={quote(self.model)}",
                      f"resource.labels.version_id={quote(self.version)}"]
        else:
            terms.append(f"resource.labels.endpoint_id={quote(self.endpoint_id)}")
            if self.deployed_model_id:
                terms.append(f"metric.labels.deployed_model_id={quote(self.deployed_model_id)}")
        return " AND ".join(terms)


def _endpoint_id(value: str) -> str:
    """The numeric id of ``projects/p/locations/l/endpoints/<id>`` (or the id itself)."""
    return value.rstrip("/").rsplit("/endpoints/", 1)[-1] if value else ""


def monitored_target(spec_like: Any) -> MonitoredTarget:
    """The ``MonitoredTarget`` of a RunSpec-like object merged with the deploy task's output.

    Reads ``project``, ``target`` (``caip`` | ``vertex``; for ``endpoint`` the ``protocol``
    decides), ``run_id``, ``model_name``, ``model_version``, and for Vertex ``endpoint_id``
    (or an ``endpoint`` resource name) and optionally ``deployed_model_id``.
    """
    target = str(field(spec_like, "target"))
    family = target if target in FAMILIES else str(field(spec_like, "protocol"))
    if family not in FAMILIES:
        raise ValueError(
            f"no Cloud Monitoring metrics for target={target!r} "
            f"protocol={field(spec_like, 'protocol')!r}: use target 'caip' or 'vertex' "
            f"(or target 'endpoint' with protocol 'caip' or 'vertex')")
    project = str(field(spec_like, "project"))
    if not project or project == "local":
        raise ValueError(f"project must name a Google Cloud project for {family} metrics, "
                         f"got {project!r}")
    result = MonitoredTarget(
        project=project,
        metrics=FAMILIES[family],
        run_id=str(field(spec_like, "run_id")),
        model=str(field(spec_like, "model_name")),
        version=str(field(spec_like, "model_version")),
        endpoint_id=_endpoint_id(str(field(spec_like, "endpoint_id")
                                     or field(spec_like, "endpoint"))),
        deployed_model_id=str(field(spec_like, "deployed_model_id")),
    )
    if family == "caip" and not (result.model and result.version):
        raise ValueError("caip metrics need model_name and model_version (the AI Platform "
                         "model and version ids)")
    if family == "vertex" and not result.endpoint_id:
        raise ValueError("vertex metrics need endpoint_id (or an endpoint resource name): pass "
                         "the deploy task's output merged into the spec")
    return result


def as_monitored(scope: MonitoredTarget | Any) -> MonitoredTarget:
    """``scope`` itself, or the ``MonitoredTarget`` of a RunSpec-like merged with deploy
    output (the older call style, still accepted: see :func:`monitored_target`)."""
    return scope if isinstance(scope, MonitoredTarget) else monitored_target(scope)
