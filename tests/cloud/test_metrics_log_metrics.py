"""Log-based metrics: LoggingMetricsHook + ensure_log_metrics against a fake
MetricsServiceV2Client that keeps metrics like the API does and records every request."""

from __future__ import annotations

import json

import pytest
from google.api_core.exceptions import (
    AlreadyExists,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from google.cloud.logging_v2.types import (
    CreateLogMetricRequest,
    DeleteLogMetricRequest,
    GetLogMetricRequest,
    LogMetric,
    UpdateLogMetricRequest,
)

PROJECT = "proj-1"


class FakeMetricsClient:
    """``MetricsServiceV2Client`` stand-in: same methods, same request types, same errors."""

    def __init__(self):
        self.metrics: dict[str, LogMetric] = {}
        self.calls: list[tuple[str, object]] = []
        self.fail: dict[str, Exception] = {}

    def _record(self, method, request, expected_type):
        assert isinstance(request, expected_type)
        self.calls.append((method, request))
        if method in self.fail:
            raise self.fail[method]

    def _stored(self, parent: str, metric: LogMetric) -> LogMetric:
        # the server adds fields of its own; ensure_log_metrics must ignore them
        stored = LogMetric.deserialize(LogMetric.serialize(metric))
        stored.metric_descriptor.name = f"{parent}/metricDescriptors/logging.googleapis.com/" \
                                        f"user/{metric.name}"
        stored.metric_descriptor.type = f"logging.googleapis.com/user/{metric.name}"
        stored.metric_descriptor.description = metric.description
        stored.version = LogMetric.ApiVersion.V2
        return stored

    def get_log_metric(self, request):
        self._record("get", request, GetLogMetricRequest)
        if request.metric_name not in self.metrics:
            raise NotFound(f"Metric {request.metric_name} does not exist.")
        return self.metrics[request.metric_name]

    def create_log_metric(self, request):
        self._record("create", request, CreateLogMetricRequest)
        path = f"{request.parent}/metrics/{request.metric.name}"
        if path in self.metrics:
            raise AlreadyExists(f"Metric {request.metric.name} already exists.")
        self.metrics[path] = self._stored(request.parent, request.metric)
        return self.metrics[path]

    def update_log_metric(self, request):
        self._record("update", request, UpdateLogMetricRequest)
        parent = request.metric_name.split("/metrics/")[0]
        self.metrics[request.metric_name] = self._stored(parent, request.metric)
        return self.metrics[request.metric_name]

    def delete_log_metric(self, request):
        self._record("delete", request, DeleteLogMetricRequest)
        if request.metric_name not in self.metrics:
            raise NotFound(f"Metric {request.metric_name} does not exist.")
        del self.metrics[request.metric_name]

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]


@pytest.fixture
def fake() -> FakeMetricsClient:
    return FakeMetricsClient()


@pytest.fixture
def hook(fake, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
                       json.dumps({"conn_type": "google_cloud_platform"}))
    from caio_operators.hooks.logging_metrics import LoggingMetricsHook

    return LoggingMetricsHook(client=fake)


def test_first_call_creates_every_metric_exactly_as_defined(hook, fake):
    from caio_operators.metrics.log_metrics import ensure_log_metrics

    actions = ensure_log_metrics(hook, PROJECT)

    assert actions == {"locust_users": "created", "locust_latency": "created",
                       "locust_num_requests": "created", "locust_num_failures": "created"}
    assert fake.methods() == ["get", "create"] * 4
    gets = [r for m, r in fake.calls if m == "get"]
    assert [r.metric_name for r in gets] == [
        "projects/proj-1/metrics/locust_users", "projects/proj-1/metrics/locust_latency",
        "projects/proj-1/metrics/locust_num_requests",
        "projects/proj-1/metrics/locust_num_failures"]
    creates = {r.metric.name: r for m, r in fake.calls if m == "create"}
    latency = creates["locust_latency"]
    assert latency.parent == "projects/proj-1"
    assert latency.metric.filter == \
        'logName="projects/proj-1/logs/locust" AND jsonPayload.latency:*'
    assert latency.metric.value_extractor == "EXTRACT(jsonPayload.latency)"
    assert dict(latency.metric.label_extractors) == {
        "test_id": "EXTRACT(jsonPayload.test_id)",
        "signature": "EXTRACT(jsonPayload.signature)"}
    descriptor = latency.metric.metric_descriptor
    # DELTA, DISTRIBUTION
    assert (descriptor.metric_kind, descriptor.value_type, descriptor.unit) == (2, 5, "ms")
    assert [(label.key, label.value_type) for label in descriptor.labels] == [
        ("test_id", 0), ("signature", 0)]  # STRING
    buckets = latency.metric.bucket_options.exponential_buckets
    assert (buckets.num_finite_buckets, buckets.growth_factor, buckets.scale) == (48, 1.25, 1.0)
    assert creates["locust_users"].metric.value_extractor == "EXTRACT(jsonPayload.user_count)"
    assert creates["locust_num_failures"].metric.filter == \
        'logName="projects/proj-1/logs/locust" AND jsonPayload.num_failures:*'


def test_second_call_changes_nothing(hook, fake):
    from caio_operators.metrics.log_metrics import ensure_log_metrics

    ensure_log_metrics(hook, PROJECT)
    fake.calls.clear()

    actions = ensure_log_metrics(hook, PROJECT)

    assert set(actions.values()) == {"unchanged"}
    assert fake.methods() == ["get"] * 4  # no create, no update


def test_a_changed_filter_is_updated_in_place(hook, fake):
    from caio_operators.metrics.log_metrics import ensure_log_metrics

    ensure_log_metrics(hook, PROJECT)
    path = "projects/proj-1/metrics/locust_latency"
    fake.metrics[path].filter = 'logName="projects/proj-1/logs/old"'  # edited by hand
    fake.calls.clear()

    actions = ensure_log_metrics(hook, PROJECT)

    assert actions["locust_latency"] == "updated"
    assert [a for name, a in actions.items() if name != "locust_latency"] == ["unchanged"] * 3
    updates = [r for m, r in fake.calls if m == "update"]
    assert len(updates) == 1
    assert updates[0].metric_name == path
    assert updates[0].metric.filter == \
        'logName="projects/proj-1/logs/locust" AND jsonPayload.latency:*'
    assert fake.metrics[path].filter.endswith("jsonPayload.latency:*")


def test_a_metric_of_another_kind_is_deleted_and_created_again(hook, fake):
    from caio_operators.metrics.log_metrics import ensure_log_metrics

    counter = LogMetric(name="locust_users", filter="logName=x",
                        metric_descriptor={"metric_kind": "DELTA", "value_type": "INT64"})
    fake.metrics["projects/proj-1/metrics/locust_users"] = counter

    actions = ensure_log_metrics(hook, PROJECT)

    assert actions["locust_users"] == "recreated"
    assert fake.methods()[:3] == ["get", "delete", "create"]
    stored = fake.metrics["projects/proj-1/metrics/locust_users"]
    assert stored.metric_descriptor.value_type == 5  # DISTRIBUTION


def test_a_concurrent_create_falls_back_to_update(hook, fake):
    from caio_operators.metrics.log_metrics import LOG_METRICS, ensure_log_metrics

    fake.fail["create"] = AlreadyExists("Metric locust_users already exists.")

    actions = ensure_log_metrics(hook, PROJECT, LOG_METRICS[:1])

    assert actions == {"locust_users": "updated"}
    assert fake.methods() == ["get", "create", "update"]


def test_delete_counts_not_found_as_success(hook, fake):
    from caio_operators.metrics.log_metrics import delete_log_metrics, ensure_log_metrics

    assert hook.delete_metric(name="locust_users", project_id=PROJECT) is False
    ensure_log_metrics(hook, PROJECT)

    assert delete_log_metrics(hook, PROJECT) == {
        "locust_users": True, "locust_latency": True, "locust_num_requests": True,
        "locust_num_failures": True}
    assert fake.metrics == {}
    assert delete_log_metrics(hook, PROJECT) == dict.fromkeys(
        ["locust_users", "locust_latency", "locust_num_requests", "locust_num_failures"], False)


def test_get_of_a_missing_metric_is_none(hook):
    assert hook.get_metric(name="nope", project_id=PROJECT) is None


def test_permission_denied_names_the_missing_role(hook, fake):
    from caio_operators.hooks.errors import GoogleApiError
    from caio_operators.metrics.log_metrics import ensure_log_metrics

    fake.fail["create"] = PermissionDenied(
        "Permission 'logging.logMetrics.create' denied on resource (or it may not exist).")

    with pytest.raises(GoogleApiError) as caught:
        ensure_log_metrics(hook, PROJECT)

    error = caught.value
    assert (error.status, error.role) == (403, "roles/logging.configWriter")
    assert "Permission 'logging.logMetrics.create' denied" in str(error)
    assert "needs roles/logging.configWriter on the project" in str(error)
    assert isinstance(error.__cause__, PermissionDenied)
    assert fake.metrics == {}


def test_disabled_api_says_which_api_to_enable(hook, fake):
    from caio_operators.hooks.errors import GoogleApiError

    fake.fail["get"] = PermissionDenied(
        "Cloud Logging API has not been used in project 42 before or it is disabled.")

    with pytest.raises(GoogleApiError, match=r"gcloud services enable logging\.googleapis\.com"):
        hook.get_metric(name="locust_users", project_id=PROJECT)


def test_quota_errors_are_retryable_and_say_so(hook, fake):
    from caio_operators.hooks.errors import GoogleApiError

    fake.fail["update"] = ResourceExhausted("Quota exceeded for quota metric 'Write requests'")

    with pytest.raises(GoogleApiError) as caught:
        hook.update_metric(metric={"name": "locust_users"}, project_id=PROJECT)

    assert (caught.value.status, caught.value.retryable) == (429, True)
    assert "Quota exceeded for quota metric 'Write requests'" in str(caught.value)
    assert "logging.googleapis.com" in str(caught.value)
