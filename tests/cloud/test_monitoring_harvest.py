"""Cloud Monitoring harvest: the exact ListTimeSeries requests, and real monitoring_v3
TimeSeries messages turned into tidy ``timeseries`` rows (literal numbers)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pandas as pd
import pytest
from google.api_core.exceptions import NotFound, PermissionDenied
from google.cloud import monitoring_v3

from caio_operators.hooks.errors import GoogleApiError
from caio_operators.metrics import monitoring as mon
from caio_operators.results import schema as sc

VERTEX = {"project": "proj-1", "target": "vertex", "run_id": "run-7",
          "model_name": "resnet101", "model_version": "v1",
          "endpoint_id": "4242", "deployed_model_id": "77"}
CAIP = {"project": "proj-1", "target": "caip", "run_id": "run-8",
        "model_name": "resnet101", "model_version": "v1"}
T0 = 60 * 28_333_333  # 2023-11-14T22:13:00Z, on the one-minute grid
START, END = T0 + 5.5, T0 + 170.0  # the load window; aligned: [T0, T0 + 180]
ENDPOINT = ('resource.type="aiplatform.googleapis.com/Endpoint" AND '
            'resource.labels.endpoint_id="4242" AND metric.labels.deployed_model_id="77"')


def point(end_s, **value):
    """A point of an aligned series: the interval ends on the grid."""
    return {"interval": {"start_time": {"seconds": end_s - 60}, "end_time": {"seconds": end_s}},
            "value": value}


def series(labels, *points):
    # Monitoring returns points newest first; the harvest must not depend on the order
    return monitoring_v3.TimeSeries(metric={"type": "t", "labels": labels},
                                    points=sorted(points, key=lambda p: -p["interval"]
                                                  ["end_time"]["seconds"]))


def dist(count, mean):
    return {"distribution_value": {"count": count, "mean": mean}}


class FakeMetricClient:
    """``MetricServiceClient`` stand-in: answers ``list_time_series`` by metric type (and
    cross-series reducer, for the latency percentiles)."""

    def __init__(self, answers=None, errors=None):
        self.answers = answers or {}
        self.errors = errors or {}
        self.requests: list[monitoring_v3.ListTimeSeriesRequest] = []

    def list_time_series(self, request):
        assert isinstance(request, monitoring_v3.ListTimeSeriesRequest)
        self.requests.append(request)
        metric_type = request.filter.split('"')[1]
        if metric_type in self.errors:
            raise self.errors[metric_type]
        reducer = request.aggregation.cross_series_reducer.name
        return iter(self.answers.get((metric_type, reducer), self.answers.get(metric_type, [])))


def test_alignment_period_is_the_smallest_multiple_of_the_interval_of_at_least_60s():
    assert [mon.alignment_period_s(i) for i in (1, 0.5, 2.5, 45, 60, 120)] == \
        [60, 60, 60, 90, 60, 120]
    for bad in (0, -1, 0.7):
        with pytest.raises(ValueError, match="interval_s"):
            mon.alignment_period_s(bad)


def test_vertex_requests_have_the_exact_filters_and_aggregations():
    target = mon.monitored_target(VERTEX)
    queries = mon.build_queries(target, datetime.fromtimestamp(START, UTC),
                                datetime.fromtimestamp(END, UTC), interval_s=1.0)

    got = {q.spec.key: q.request for q in queries}
    assert list(got) == ["replicas", "target_replicas", "cpu", "memory", "accelerator",
                         "responses", "predictions",
                         "latency_p50", "latency_p95", "latency_p99", "locust_users",
                         "locust_latency", "locust_num_requests", "locust_num_failures"]
    for request in got.values():
        assert request.name == "projects/proj-1"
        assert request.interval.start_time.timestamp() == T0
        assert request.interval.end_time.timestamp() == T0 + 180
        assert request.aggregation.alignment_period.total_seconds() == 60
        assert request.view == monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL

    def agg(key):
        a = got[key].aggregation
        return (a.per_series_aligner.name, a.cross_series_reducer.name, list(a.group_by_fields))

    assert got["replicas"].filter == \
        f'metric.type="aiplatform.googleapis.com/prediction/online/replicas" AND {ENDPOINT}'
    assert agg("replicas") == ("ALIGN_MEAN", "REDUCE_SUM", [])
    assert got["target_replicas"].filter == (
        'metric.type="aiplatform.googleapis.com/prediction/online/target_replicas" AND '
        f'{ENDPOINT}')
    assert agg("target_replicas") == ("ALIGN_MAX", "REDUCE_SUM", [])
    assert got["cpu"].filter == \
        f'metric.type="aiplatform.googleapis.com/prediction/online/cpu/utilization" AND {ENDPOINT}'
    assert agg("cpu") == ("ALIGN_MEAN", "REDUCE_MEAN", [])
    assert got["memory"].filter.startswith(
        'metric.type="aiplatform.googleapis.com/prediction/online/memory/bytes_used" AND ')
    assert got["accelerator"].filter.startswith(
        'metric.type="aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle" AND ')
    assert got["responses"].filter == \
        f'metric.type="aiplatform.googleapis.com/prediction/online/response_count" AND {ENDPOINT}'
    assert agg("responses") == ("ALIGN_RATE", "REDUCE_SUM", ["metric.label.response_code"])
    assert agg("predictions") == ("ALIGN_RATE", "REDUCE_SUM", [])
    assert got["latency_p99"].filter == (
        'metric.type="aiplatform.googleapis.com/prediction/online/prediction_latencies" AND '
        f'{ENDPOINT}')
    assert agg("latency_p50") == ("ALIGN_DELTA", "REDUCE_PERCENTILE_50",
                                  ["metric.label.latency_type"])
    assert agg("latency_p95")[1] == "REDUCE_PERCENTILE_95"
    assert agg("latency_p99")[1] == "REDUCE_PERCENTILE_99"
    assert got["locust_latency"].filter == \
        'metric.type="logging.googleapis.com/user/locust_latency" AND ' \
        'metric.labels.test_id="run-7"'
    assert agg("locust_num_requests") == ("ALIGN_DELTA", "REDUCE_SUM", ["metric.label.signature"])


def test_caip_requests_select_the_model_version():
    queries = mon.build_queries(mon.monitored_target(CAIP), START, END, 1.0,
                                include_log_metrics=False)
    filters = {q.spec.key: q.request.filter for q in queries}
    assert len(filters) == 10  # the 9 series and target_replicas
    assert filters["target_replicas"].startswith(
        'metric.type="ml.googleapis.com/prediction/online/target_replicas" AND ')
    assert filters["latency_p50"] == (
        'metric.type="ml.googleapis.com/prediction/latencies" AND '
        'resource.type="cloudml_model_version" AND resource.labels.model_id="resnet101" AND '
        'resource.labels.version_id="v1"')
    assert filters["predictions"].startswith(
        'metric.type="ml.googleapis.com/prediction/prediction_count" AND ')
    assert filters["replicas"].startswith(
        'metric.type="ml.googleapis.com/prediction/online/replicas" AND ')


def _vertex_answers():
    v = "aiplatform.googleapis.com/prediction/online/"
    t1, t2, t3 = T0 + 60, T0 + 120, T0 + 180
    return {
        v + "replicas": [series({}, point(t1, double_value=1.0), point(t2, double_value=2.0))],
        v + "target_replicas": [series({}, point(t1, int64_value=2), point(t2, int64_value=2))],
        v + "cpu/utilization": [series({}, point(t1, double_value=0.35),
                                       point(t2, double_value=1.5))],
        v + "memory/bytes_used": [series({}, point(t1, double_value=512 * 2**20))],
        v + "response_count": [
            series({"response_code": "200"}, point(t1, double_value=10.0),
                   point(t2, double_value=12.5)),
            series({"response_code": "429"}, point(t1, double_value=0.5))],
        v + "prediction_count": [series({}, point(t2, int64_value=25))],
        (v + "prediction_latencies", "REDUCE_PERCENTILE_50"): [
            series({"latency_type": "model"}, point(t1, double_value=12.5),
                   point(t2, double_value=math.nan)),
            series({"latency_type": "overhead"}, point(t1, double_value=3.0))],
        (v + "prediction_latencies", "REDUCE_PERCENTILE_95"): [
            series({"latency_type": "model"}, point(t1, double_value=30.0))],
        (v + "prediction_latencies", "REDUCE_PERCENTILE_99"): [
            series({"latency_type": "model"}, point(t1, double_value=45.0)),
            series({"latency_type": "overhead"}, point(t1, double_value=9.0))],
        "logging.googleapis.com/user/locust_users": [
            series({"signature": "serving_default"}, point(t1, **dist(3, 4.0)),
                   point(t2, **dist(0, 0.0)))],  # no log entry in the second minute
        "logging.googleapis.com/user/locust_latency": [
            series({"signature": "serving_default"}, point(t1, **dist(6, 230.0)),
                   point(t2, **dist(6, 250.5)))],
        "logging.googleapis.com/user/locust_num_requests": [
            series({"signature": "serving_default"}, point(t1, **dist(6, 120.0)),
                   point(t2, **dist(6, 720.0)), point(t3, **dist(6, 1320.0)))],
        "logging.googleapis.com/user/locust_num_failures": [
            series({"signature": "serving_default"}, point(t1, **dist(6, 3.0)),
                   point(t2, **dist(6, 3.0)), point(t3, **dist(6, 0.0)))],  # stats reset
    }


def test_harvest_turns_time_series_into_tidy_rows():
    client = FakeMetricClient(_vertex_answers())

    frame = mon.harvest_monitoring(client, VERTEX, START, END, interval_s=1.0).rows

    sc.validate("timeseries", frame)
    assert len(client.requests) == 14  # 13 series and target_replicas
    assert set(frame["run_id"]) == {"run-7"}
    rows = sorted((metric, dim, int(ts.timestamp()) - T0, round(value, 6))
                  for ts, metric, dim, value in
                  frame[["ts", "metric", "dimension", "value"]].itertuples(index=False))
    assert rows == sorted([
        ("replicas", "all", 0, 1.0), ("replicas", "all", 60, 2.0),
        ("target_replicas", "all", 0, 2.0), ("target_replicas", "all", 60, 2.0),
        ("cpu_utilization_pct", "all", 0, 35.0), ("cpu_utilization_pct", "all", 60, 150.0),
        ("memory_mb", "all", 0, 512.0),
        ("server_request_rate_rps", "code-200", 0, 10.0),
        ("server_request_rate_rps", "code-200", 60, 12.5),
        ("server_request_rate_rps", "code-429", 0, 0.5),
        ("server_request_rate_rps", "all", 0, 10.5),
        ("server_request_rate_rps", "all", 60, 12.5),
        ("server_request_rate_rps", "predictions", 60, 25.0),
        ("server_latency_p50_ms", "model", 0, 12.5),     # the NaN minute is dropped
        ("server_latency_p50_ms", "overhead", 0, 3.0),
        ("server_latency_p95_ms", "model", 0, 30.0),
        ("server_latency_p99_ms", "model", 0, 45.0),
        ("server_latency_p99_ms", "overhead", 0, 9.0),
        ("users", "log:serving_default", 0, 4.0),          # the empty minute is dropped
        ("client_latency_p95_ms", "log:serving_default", 0, 230.0),
        ("client_latency_p95_ms", "log:serving_default", 60, 250.5),
        ("request_rate_rps", "log:serving_default", 60, 10.0),   # (720 - 120) / 60
        ("request_rate_rps", "log:serving_default", 120, 10.0),  # (1320 - 720) / 60
        ("failure_rate_rps", "log:serving_default", 60, 0.0),    # the reset is dropped
    ])
    assert frame["ts"].min() == pd.Timestamp(T0, unit="s", tz="UTC")


def test_caip_latencies_in_microseconds_become_milliseconds():
    answers = {"ml.googleapis.com/prediction/latencies": [
        series({"latency_type": "model"}, point(T0 + 60, double_value=12_000.0))]}
    frame = mon.harvest_monitoring(FakeMetricClient(answers), CAIP, START, END,
                                   include_log_metrics=False).rows
    assert set(zip(frame["metric"], frame["dimension"], frame["value"], strict=True)) == {
        ("server_latency_p50_ms", "model", 12.0), ("server_latency_p95_ms", "model", 12.0),
        ("server_latency_p99_ms", "model", 12.0)}
    assert list(frame["ts"].unique()) == [pd.Timestamp(T0, unit="s", tz="UTC")]


def test_timeseries_from_responses_is_a_pure_function_of_the_messages():
    target = mon.monitored_target(VERTEX)
    queries = {q.spec.key: q for q in mon.build_queries(target, START, END, 30.0)}
    responses = [
        (queries["cpu"], [series({}, point(T0 + 60, double_value=0.25))]),
        (queries["replicas"], [series({}, point(T0 + 60, int64_value=1)),
                               series({}, point(T0 + 60, int64_value=2))]),  # summed
    ]
    frame = mon.timeseries_from_responses("r", responses)
    assert list(frame.itertuples(index=False, name=None)) == [
        ("r", pd.Timestamp(T0, unit="s", tz="UTC"), "cpu_utilization_pct", "all", 25.0),
        ("r", pd.Timestamp(T0, unit="s", tz="UTC"), "replicas", "all", 3.0)]
    empty = mon.timeseries_from_responses("r", [(queries["cpu"], [])])
    sc.validate("timeseries", empty)
    assert empty.empty


def test_a_metric_not_found_yields_no_rows_and_no_error():
    client = FakeMetricClient(
        _vertex_answers(),
        errors={"logging.googleapis.com/user/locust_users": NotFound("Cannot find metric(s)")})
    frame = mon.harvest_monitoring(client, VERTEX, START, END).rows
    assert sc.USERS not in set(frame["metric"])
    assert len(client.requests) == 14  # 13 series and target_replicas


def test_permission_denied_names_the_monitoring_viewer_role():
    client = FakeMetricClient(errors={
        "aiplatform.googleapis.com/prediction/online/replicas":
            PermissionDenied("Permission monitoring.timeSeries.list denied (or the resource "
                             "may not exist).")})
    with pytest.raises(GoogleApiError) as caught:
        mon.harvest_monitoring(client, VERTEX, START, END)
    assert (caught.value.status, caught.value.role) == (403, "roles/monitoring.viewer")
    assert "Permission monitoring.timeSeries.list denied" in str(caught.value)
    assert isinstance(caught.value.__cause__, PermissionDenied)


@pytest.mark.parametrize(("spec", "message"), [
    ({**VERTEX, "endpoint_id": ""}, "vertex metrics need endpoint_id"),
    ({**VERTEX, "target": "local", "protocol": "tfserving"}, "no Cloud Monitoring metrics"),
    ({**CAIP, "project": "local"}, "project must name a Google Cloud project"),
    ({**CAIP, "model_version": ""}, "caip metrics need model_name and model_version"),
])
def test_unusable_specs_are_refused_with_the_field_named(spec, message):
    with pytest.raises(ValueError, match=message):
        mon.harvest_monitoring(FakeMetricClient(), spec, START, END)


def test_endpoint_target_with_a_vertex_protocol_reads_vertex_metrics():
    spec = {**VERTEX, "target": "endpoint", "protocol": "vertex"}
    assert mon.monitored_target(spec).family == "vertex"


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="no time zone"):
        mon.build_queries(mon.monitored_target(CAIP), datetime(2024, 1, 1),
                          datetime(2024, 1, 1, 0, 5), 1.0)


def test_harvest_cloud_metrics_uses_the_hooks_metric_client(monkeypatch):
    import json

    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
                       json.dumps({"conn_type": "google_cloud_platform"}))
    from caio_operators.hooks.monitoring import MonitoringHook
    from caio_operators.metrics.cloud import harvest_cloud_metrics

    client = FakeMetricClient(_vertex_answers())
    got = harvest_cloud_metrics(VERTEX, START, END, 1.0,
                                monitoring_hook=MonitoringHook(metric_client=client))
    assert len(client.requests) == 14  # 13 series and target_replicas
    assert len(got.rows) == 24  # with the 2 target_replicas rows of _vertex_answers
    assert not got.coverage.complete  # memory's last point ends at T0 + 60 (read once)


# Late points ------------------------------------------------------------------------------

LAG_S = 150  # a point becomes readable this long after its interval ends


class LateMetricClient(FakeMetricClient):
    """Answers only the points already readable at the fake clock's time, as Cloud
    Monitoring does minutes after the fact; ``sleep`` moves the clock."""

    def __init__(self, answers, now):
        super().__init__(answers)
        self.now = now
        self.reads_at: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def list_time_series(self, request):
        if not self.reads_at or self.reads_at[-1] != self.now:
            self.reads_at.append(self.now)
        readable = []
        for one in super().list_time_series(request):
            points = [p for p in one.points
                      if p.interval.end_time.timestamp() + LAG_S <= self.now]
            if points:
                readable.append(monitoring_v3.TimeSeries(metric=one.metric, points=points))
        return iter(readable)


def _whole_window_answers():
    """Replicas, CPU and memory for every minute of the aligned window [T0, T0 + 180]."""
    v = "aiplatform.googleapis.com/prediction/online/"
    ends = (T0 + 60, T0 + 120, T0 + 180)
    return {
        v + "replicas": [series({}, *(point(e, double_value=r) for e, r in zip(
            ends, (1.0, 2.0, 3.0), strict=True)))],
        v + "cpu/utilization": [series({}, *(point(e, double_value=0.5) for e in ends))],
        v + "memory/bytes_used": [series({}, *(point(e, double_value=2**20) for e in ends))],
    }


def test_harvest_waits_for_late_points_until_the_window_is_covered(caplog):
    caplog.set_level("INFO")
    client = LateMetricClient(_whole_window_answers(), now=END + 5)  # at once after the load
    got = mon.harvest_monitoring(client, VERTEX, START, END, wait_s=300, poll_s=30,
                                 clock=client.clock, sleep=client.sleep)
    # the window's last minute ends at T0 + 180 and is readable from T0 + 330
    assert got.coverage.complete and got.coverage.covered_until == T0 + 180
    assert client.reads_at == [T0 + 175 + 30 * i for i in range(7)]  # 175, 205, ... 355
    assert client.reads_at[-2] < T0 + 180 + LAG_S <= client.reads_at[-1]
    assert got.coverage.waited_s == 180
    assert got.coverage.describe() == "complete (after waiting 180 s)"
    replicas = got.rows[got.rows["metric"] == sc.REPLICAS]
    assert sorted(replicas["value"]) == [1.0, 2.0, 3.0]  # the last minute made it in
    assert caplog.text.count("waiting for Cloud Monitoring's late points") == 6


def test_harvest_gives_up_after_wait_s_and_says_how_far_the_points_reached():
    client = LateMetricClient(_whole_window_answers(), now=END + 5)
    got = mon.harvest_monitoring(client, VERTEX, START, END, wait_s=60, poll_s=30,
                                 clock=client.clock, sleep=client.sleep)
    # gives up at the window's end + 60 s = T0 + 240: only the first minute is readable
    assert client.reads_at == [T0 + 175, T0 + 205, T0 + 235, T0 + 240]
    assert not got.coverage.complete and got.coverage.covered_until == T0 + 60
    assert got.coverage.describe() == (
        "partial: points to 2023-11-14 22:14:00 UTC of a window ending 2023-11-14 22:16:00 "
        "UTC, after waiting 65 s")
    assert sorted(got.rows[got.rows["metric"] == sc.REPLICAS]["value"]) == [1.0]


def test_no_wait_reads_once_even_before_the_window_ends():
    client = LateMetricClient(_whole_window_answers(), now=END + 5)
    got = mon.harvest_monitoring(client, VERTEX, START, END, clock=client.clock,
                                 sleep=client.sleep)
    assert client.reads_at == [END + 5] and got.coverage.covered_until is None
    assert got.coverage.describe().startswith("partial: no points yet of a window ending")
