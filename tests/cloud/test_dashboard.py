"""The Monitoring dashboard: template rendering, schema check, and ensure_dashboard through the
real googleapiclient Dashboards client over a fake HTTP transport that behaves like the API."""

from __future__ import annotations

import copy
import itertools
import json
import re
from urllib.parse import parse_qs, urlsplit

import httplib2
import pytest

CAIP = {"project": "proj-1", "target": "caip", "run_id": "run-1",
        "model_name": "resnet101", "model_version": "v1"}
VERTEX = {"project": "proj-1", "target": "vertex", "run_id": "run-2",
          "model_name": "resnet101", "model_version": "v2",
          "endpoint": "projects/proj-1/locations/us-central1/endpoints/4242",
          "deployed_model_id": "77"}


def _charts(dashboard):
    return {tile["widget"]["title"]: tile["widget"] for tile in
            dashboard["mosaicLayout"]["tiles"]}


def _query(widget):
    return widget["xyChart"]["dataSets"][0]["timeSeriesQuery"]["timeSeriesFilter"]


def test_caip_dashboard_renders_with_ai_platform_metrics_and_log_metrics():
    from caio_operators.metrics.dashboard import dashboard_values, render_dashboard

    dashboard = render_dashboard(dashboard_values(CAIP))

    assert dashboard["displayName"] == "caio-bench caip resnet101/v1"
    charts = _charts(dashboard)
    resource = ('resource.type="cloudml_model_version" AND resource.labels.model_id="resnet101"'
                ' AND resource.labels.version_id="v1"')
    assert _query(charts["CPU utilization (1.0 = one core)"])["filter"] == \
        f'metric.type="ml.googleapis.com/prediction/online/cpu/utilization" AND {resource}'
    latency = _query(charts["Server latency p99 by type"])
    assert latency == {
        "filter": f'metric.type="ml.googleapis.com/prediction/latencies" AND {resource}',
        "aggregation": {"alignmentPeriod": "60s", "perSeriesAligner": "ALIGN_DELTA",
                        "crossSeriesReducer": "REDUCE_PERCENTILE_99",
                        "groupByFields": ["metric.label.latency_type"]}}
    unit = charts["Server latency p99 by type"]["xyChart"]["dataSets"][0]["timeSeriesQuery"]
    assert unit["unitOverride"] == "us"
    users = charts["Locust users"]["xyChart"]["dataSets"][0]
    assert users["timeSeriesQuery"]["timeSeriesFilter"]["filter"] == \
        'metric.type="logging.googleapis.com/user/locust_users"'
    assert users["legendTemplate"] == "${metric.label.test_id}"  # the API's own placeholder
    text = json.dumps(dashboard)
    assert not re.search(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", text), "unfilled placeholder"
    assert len(dashboard["mosaicLayout"]["tiles"]) == 13


def test_vertex_dashboard_selects_the_endpoint_and_deployed_model():
    from caio_operators.metrics.dashboard import dashboard_values, render_dashboard

    dashboard = render_dashboard(dashboard_values(VERTEX))

    charts = _charts(dashboard)
    assert _query(charts["Replicas"]) == {
        "filter": 'metric.type="aiplatform.googleapis.com/prediction/online/replicas" AND '
                  'resource.type="aiplatform.googleapis.com/Endpoint" AND '
                  'resource.labels.endpoint_id="4242" AND '
                  'metric.labels.deployed_model_id="77"',
        "aggregation": {"alignmentPeriod": "60s", "perSeriesAligner": "ALIGN_MEAN",
                        "crossSeriesReducer": "REDUCE_SUM"}}
    assert "prediction/online/prediction_latencies" in \
        _query(charts["Server latency p50 by type"])["filter"]


def test_the_template_checks_against_the_dashboards_api_schema():
    from caio_operators.metrics.api_schema import SchemaError
    from caio_operators.metrics.dashboard import (
        dashboard_values,
        render_dashboard,
        validate_dashboard,
    )

    good = render_dashboard(dashboard_values(CAIP))
    validate_dashboard(good)

    bad = copy.deepcopy(good)
    tiles = bad["mosaicLayout"]["tiles"]
    tiles[1]["widget"]["xyChrat"] = tiles[1]["widget"].pop("xyChart")
    _query(tiles[2]["widget"])["aggregation"]["perSeriesAligner"] = "ALIGN_AVERAGE"
    _query(tiles[3]["widget"])["aggregation"]["alignmentPeriod"] = "60"
    _query(tiles[4]["widget"])["filter"] = 'metric.type="ml.googleapis.com/prediction/typo"'
    with pytest.raises(SchemaError) as caught:
        validate_dashboard(bad)
    problems = "\n".join(caught.value.problems)
    assert "unknown field 'xyChrat'" in problems
    assert "'ALIGN_AVERAGE' is not one of" in problems
    assert "expected a duration like '60s', got '60'" in problems


def test_layout_and_metric_types_are_checked_too():
    from caio_operators.metrics.api_schema import SchemaError
    from caio_operators.metrics.dashboard import (
        dashboard_values,
        render_dashboard,
        validate_dashboard,
    )

    bad = render_dashboard(dashboard_values(CAIP))
    tiles = bad["mosaicLayout"]["tiles"]
    tiles[2]["xPos"] = 0  # the second chart of a row moved onto the first
    _query(tiles[4]["widget"])["filter"] = 'metric.type="ml.googleapis.com/prediction/typo"'
    tiles[6]["width"] = 20
    with pytest.raises(SchemaError) as caught:
        validate_dashboard(bad)
    problems = "\n".join(caught.value.problems)
    assert "tiles[2] overlaps tiles[1] at (0, 2)" in problems
    assert "unknown metric type 'ml.googleapis.com/prediction/typo'" in problems
    assert "tiles[6]: 20x4 at (6,10) does not fit 12 columns" in problems


def test_a_missing_placeholder_value_is_named():
    from caio_operators.metrics.dashboard import dashboard_values, render_dashboard

    values = dashboard_values(CAIP)
    del values["latency_metric"]
    with pytest.raises(ValueError, match="without a value: latency_metric"):
        render_dashboard(values)


def test_dashboard_message_when_the_dashboards_package_is_installed():
    pytest.importorskip("google.cloud.monitoring_dashboard_v1")
    from caio_operators.metrics.dashboard import (
        dashboard_message,
        dashboard_values,
        render_dashboard,
    )

    message = dashboard_message(render_dashboard(dashboard_values(CAIP)))
    assert message.display_name == "caio-bench caip resnet101/v1"


class FakeDashboardsHttp:
    """An ``httplib2.Http`` stand-in serving the Dashboards API (v1) from memory: list with
    paging, create, patch with etag checks. Records (method, path, query, body)."""

    PROJECT_NUMBER = "123456"

    def __init__(self, existing=(), page_size=2):
        self.follow_redirects = True
        self.dashboards: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict, dict | None]] = []
        self.page_size = page_size
        self.fail_status: int | None = None
        self._ids = itertools.count(1)
        for dashboard in existing:
            self._store(dict(dashboard))

    def _store(self, body):
        name = body.get("name") or f"projects/{self.PROJECT_NUMBER}/dashboards/d{next(self._ids)}"
        etag = str(int(self.dashboards.get(name, {}).get("etag", "0")) + 1)
        self.dashboards[name] = {**body, "name": name, "etag": etag}
        return self.dashboards[name]

    def request(self, uri, method="GET", body=None, headers=None, redirections=1,
                connection_type=None):
        parts = urlsplit(uri)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        payload = json.loads(body) if body else None
        self.requests.append((method, parts.path, query, payload))
        if self.fail_status:
            return self._reply(self.fail_status, {"error": {
                "code": self.fail_status, "status": "PERMISSION_DENIED",
                "message": "Permission monitoring.dashboards.list denied (or the resource "
                           "may not exist)."}})
        assert parts.netloc == "monitoring.googleapis.com"
        if method == "GET" and parts.path == "/v1/projects/proj-1/dashboards":
            ordered = sorted(self.dashboards)
            start = int(query.get("pageToken", 0))
            page = ordered[start:start + self.page_size]
            reply = {"dashboards": [self.dashboards[n] for n in page]}
            if start + self.page_size < len(ordered):
                reply["nextPageToken"] = str(start + self.page_size)
            return self._reply(200, reply)
        if method == "POST" and parts.path == "/v1/projects/proj-1/dashboards":
            assert "name" not in payload and "etag" not in payload
            return self._reply(200, self._store(payload))
        if method == "PATCH" and parts.path.removeprefix("/v1/") in self.dashboards:
            current = self.dashboards[parts.path.removeprefix("/v1/")]
            if payload.get("etag") not in (None, current["etag"]):
                return self._reply(409, {"error": {"code": 409, "status": "ABORTED",
                                                   "message": "etag mismatch"}})
            return self._reply(200, self._store(payload))
        return self._reply(404, {"error": {"code": 404, "message": f"no {method} {uri}"}})

    @staticmethod
    def _reply(status, body):
        return httplib2.Response({"status": str(status)}), json.dumps(body).encode()


@pytest.fixture
def monitoring_hook(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
                       json.dumps({"conn_type": "google_cloud_platform"}))
    from caio_operators.hooks.monitoring import MonitoringHook

    return MonitoringHook()


def test_ensure_dashboard_creates_then_finds_it_by_display_name_then_updates(monitoring_hook):
    from caio_operators.metrics.dashboard import (
        dashboard_values,
        ensure_dashboard,
        render_dashboard,
    )

    others = [{"displayName": f"someone else's {i}", "mosaicLayout": {"columns": 12}}
              for i in range(3)]
    http = FakeDashboardsHttp(existing=others)
    client = monitoring_hook.get_dashboards_service(http=http)  # bundled discovery doc
    dashboard = render_dashboard(dashboard_values(CAIP))

    first = ensure_dashboard(client, "proj-1", dashboard)

    assert first == {"action": "created", "name": "projects/123456/dashboards/d4",
                     "display_name": "caio-bench caip resnet101/v1"}
    methods = [(m, path, q.get("pageToken")) for m, path, q, _ in http.requests]
    assert methods == [("GET", "/v1/projects/proj-1/dashboards", None),
                       ("GET", "/v1/projects/proj-1/dashboards", "2"),
                       ("POST", "/v1/projects/proj-1/dashboards", None)]
    assert http.requests[0][2]["pageSize"] == "1000"
    assert http.requests[-1][3] == dashboard  # the rendered body, as is

    http.requests.clear()
    second = ensure_dashboard(client, "proj-1", dashboard)
    assert second["action"] == "unchanged"
    assert [m for m, *_ in http.requests] == ["GET", "GET"]  # 4 dashboards, 2 per page

    http.requests.clear()
    changed = render_dashboard({**dashboard_values(CAIP), "latency_unit": "ms"})
    third = ensure_dashboard(client, "proj-1", changed)
    assert third == {**first, "action": "updated"}
    method, path, _, body = http.requests[-1]
    assert (method, path) == ("PATCH", "/v1/projects/123456/dashboards/d4")
    assert body["name"] == "projects/123456/dashboards/d4"
    assert body["etag"] == "1"
    assert body["mosaicLayout"] == changed["mosaicLayout"]
    assert len(http.dashboards) == 4


def test_dashboard_permission_error_names_the_role(monitoring_hook):
    from caio_operators.hooks.errors import GoogleApiError
    from caio_operators.metrics.dashboard import (
        dashboard_values,
        ensure_dashboard,
        render_dashboard,
    )

    http = FakeDashboardsHttp()
    http.fail_status = 403
    client = monitoring_hook.get_dashboards_service(http=http)

    with pytest.raises(GoogleApiError) as caught:
        ensure_dashboard(client, "proj-1", render_dashboard(dashboard_values(CAIP)))

    assert (caught.value.status, caught.value.role) == (403, "roles/monitoring.dashboardEditor")
    assert "Permission monitoring.dashboards.list denied" in str(caught.value)
    assert [m for m, *_ in http.requests] == ["GET"]  # nothing was written


class TinyMetricsClient:
    """Just enough of ``MetricsServiceV2Client`` for the prepare stage: get/create/update."""

    def __init__(self):
        self.metrics = {}

    def get_log_metric(self, request):
        from google.api_core.exceptions import NotFound

        if request.metric_name not in self.metrics:
            raise NotFound(request.metric_name)
        return self.metrics[request.metric_name]

    def create_log_metric(self, request):
        self.metrics[f"{request.parent}/metrics/{request.metric.name}"] = request.metric
        return request.metric


def test_prepare_cloud_metrics_makes_log_metrics_and_the_dashboard(monitoring_hook):
    from caio_operators.hooks.logging_metrics import LoggingMetricsHook
    from caio_operators.metrics.cloud import prepare_cloud_metrics

    logging_client = TinyMetricsClient()
    http = FakeDashboardsHttp()
    monitoring_hook.get_dashboards_service(http=http)

    result = prepare_cloud_metrics(VERTEX, logging_hook=LoggingMetricsHook(client=logging_client),
                                   monitoring_hook=monitoring_hook)

    assert result["log_metrics"] == dict.fromkeys(
        ["locust_users", "locust_latency", "locust_num_requests", "locust_num_failures"],
        "created")
    assert result["dashboard"] == {"action": "created",
                                   "name": "projects/123456/dashboards/d1",
                                   "display_name": "caio-bench vertex resnet101/v2"}
    again = prepare_cloud_metrics(VERTEX, logging_hook=LoggingMetricsHook(client=logging_client),
                                  monitoring_hook=monitoring_hook)
    assert set(again["log_metrics"].values()) == {"unchanged"}
    assert again["dashboard"]["action"] == "unchanged"
    assert len(logging_client.metrics) == 4 and len(http.dashboards) == 1
