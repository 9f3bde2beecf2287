"""Log-based metrics over the Locust master's periodic Cloud Logging entries.

Contract with the load generator: while a cloud test runs, the Locust master writes one
entry every few seconds to the log ``locust`` of the project, with a JSON payload::

    {"test_id": "<run_id>", "signature": "serving_preprocess", "model": "<name>",
     "latency": <p95 response time over Locust's window, ms>, "user_count": <users>,
     "num_requests": <requests since start>, "num_failures": <failures since start>}

Each field becomes a DELTA DISTRIBUTION metric labelled with ``test_id`` and ``signature``
(as in Google's caip-load-testing sample), so a dashboard can plot it live and the harvest
can read it back per run. ``ensure_log_metrics`` creates what is missing and updates what
changed; calling it twice makes no change the second time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.cloud.logging_v2.types import LogMetric
from google.protobuf import json_format

from caio_operators.hooks.errors import is_conflict
from caio_operators.results import schema as sc

log = logging.getLogger(__name__)

LOG_NAME = "locust"
LABELS = ("test_id", "signature")
USER_METRIC_PREFIX = "logging.googleapis.com/user/"


def _exponential(scale: float, growth: float, count: int) -> dict[str, Any]:
    return {"exponential_buckets": {"scale": scale, "growth_factor": growth,
                                    "num_finite_buckets": count}}


@dataclass(frozen=True)
class LogMetricDef:
    """One log-based metric: which payload field, how it is bucketed, what it feeds."""

    name: str
    json_field: str
    description: str
    unit: str
    buckets: dict[str, Any]
    schema_metric: str          # the ``timeseries`` metric the harvest turns it into
    cumulative: bool = False    # a running total (harvested as a per-second rate)
    labels: tuple[str, ...] = field(default=LABELS)

    @property
    def metric_type(self) -> str:
        return USER_METRIC_PREFIX + self.name


LOG_METRICS: tuple[LogMetricDef, ...] = (
    LogMetricDef("locust_users", "user_count", "Simulated Locust users (caio-bench)", "1",
                 _exponential(1.0, 2.0, 17), sc.USERS),
    LogMetricDef("locust_latency", "latency",
                 "Locust p95 response time over its sliding window, ms (caio-bench)", "ms",
                 _exponential(1.0, 1.25, 48), sc.CLIENT_LATENCY_P95_MS),
    LogMetricDef("locust_num_requests", "num_requests",
                 "Requests since the Locust test started (caio-bench)", "1",
                 _exponential(1.0, 2.0, 32), sc.REQUEST_RATE_RPS, cumulative=True),
    LogMetricDef("locust_num_failures", "num_failures",
                 "Failed requests since the Locust test started (caio-bench)", "1",
                 _exponential(1.0, 2.0, 32), sc.FAILURE_RATE_RPS, cumulative=True),
)


def log_name(project: str) -> str:
    return f"projects/{project}/logs/{LOG_NAME}"


def log_filter(project: str, json_field: str) -> str:
    """Entries of the ``locust`` log that carry ``json_field``."""
    return f'logName="{log_name(project)}" AND jsonPayload.{json_field}:*'


def build_log_metric(definition: LogMetricDef, project: str) -> LogMetric:
    """The ``LogMetric`` message for ``definition`` in ``project``."""
    return LogMetric(
        name=definition.name,
        description=definition.description,
        filter=log_filter(project, definition.json_field),
        value_extractor=f"EXTRACT(jsonPayload.{definition.json_field})",
        label_extractors={label: f"EXTRACT(jsonPayload.{label})"
                          for label in definition.labels},
        metric_descriptor={
            "metric_kind": "DELTA",
            "value_type": "DISTRIBUTION",
            "unit": definition.unit,
            "labels": [{"key": label, "value_type": "STRING"} for label in definition.labels],
        },
        bucket_options=definition.buckets,
    )


def _kind(metric: LogMetric) -> tuple[int, int]:
    descriptor = metric.metric_descriptor
    return descriptor.metric_kind, descriptor.value_type


def owned_fields(metric: LogMetric) -> dict[str, Any]:
    """The fields this module sets, normalised: what decides "unchanged" vs "update".

    The server fills in more (descriptor name/type, create time, version); those are
    ignored so a metric read back compares equal to the one we would write.
    """
    descriptor = metric.metric_descriptor
    return {
        "description": metric.description,
        "filter": metric.filter,
        "disabled": metric.disabled,
        "value_extractor": metric.value_extractor,
        "label_extractors": dict(sorted(metric.label_extractors.items())),
        "bucket_options": json_format.MessageToDict(metric.bucket_options),
        "kind": _kind(metric),
        "unit": descriptor.unit,
        "labels": sorted((label.key, label.value_type) for label in descriptor.labels),
    }


def ensure_log_metrics(hook: Any, project: str,
                       definitions: Iterable[LogMetricDef] = LOG_METRICS) -> dict[str, str]:
    """Make every metric of ``definitions`` exist in ``project`` exactly as defined.

    ``hook`` is a ``LoggingMetricsHook`` (or anything with its get/create/update/delete
    methods). Returns ``{metric name: "created" | "updated" | "recreated" | "unchanged"}``.
    A metric whose kind or value type differs cannot be updated in place, so it is deleted
    and created again ("recreated"; its past points stay in Monitoring under the old
    descriptor until they expire).
    """
    actions: dict[str, str] = {}
    for definition in definitions:
        desired = build_log_metric(definition, project)
        existing = hook.get_metric(name=definition.name, project_id=project)
        if existing is None:
            try:
                hook.create_metric(metric=desired, project_id=project)
                action = "created"
            except Exception as exc:  # another run created it between our get and create
                if not is_conflict(exc):
                    raise
                hook.update_metric(metric=desired, project_id=project)
                action = "updated"
        elif owned_fields(existing) == owned_fields(desired):
            action = "unchanged"
        elif _kind(existing) != _kind(desired):
            hook.delete_metric(name=definition.name, project_id=project)
            hook.create_metric(metric=desired, project_id=project)
            action = "recreated"
        else:
            hook.update_metric(metric=desired, project_id=project)
            action = "updated"
        log.info("log-based metric %s: %s", definition.name, action)
        actions[definition.name] = action
    return actions


def delete_log_metrics(hook: Any, project: str,
                       definitions: Iterable[LogMetricDef] = LOG_METRICS) -> dict[str, bool]:
    """Delete the metrics of ``definitions``: ``{name: True if deleted, False if absent}``."""
    return {d.name: hook.delete_metric(name=d.name, project_id=project) for d in definitions}
