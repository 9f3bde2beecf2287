"""Harvest a cloud run's server-side series from Cloud Monitoring into the ``timeseries`` table.

``build_queries`` turns a deployment and a run window into ``ListTimeSeriesRequest``s, one
per metric (and per percentile for latencies), all aligned on one grid: the alignment
period is the smallest multiple of ``interval_s`` that Cloud Monitoring accepts (60 s or
more), and the window is widened to whole periods, so every point starts at a multiple of
the period. ``timeseries_from_responses`` is the pure part: ``TimeSeries`` messages in,
tidy rows out. ``harvest_monitoring`` runs the requests through an injected
``MetricServiceClient`` and returns the rows.

What becomes which row (``dimension`` in brackets):

- replicas (sum over series) -> ``replicas`` [all]
- target replicas (the autoscaler's wish, BETA gauge; max in the period, sum over series)
  -> ``target_replicas`` [all]
- CPU utilization (fraction of a core, mean over replicas) -> ``cpu_utilization_pct`` [all]
- memory bytes (mean over replicas) -> ``memory_mb`` [all] (MB = 2**20 bytes, as locally)
- accelerator duty cycle (mean) -> ``gpu_utilization_pct`` [all]
- responses per second -> ``server_request_rate_rps`` [code-<response code>] and [all]
- predictions (instances) per second -> ``server_request_rate_rps`` [predictions]
- latency percentiles 50/95/99 per latency type -> ``server_latency_p*_ms`` [model,
  overhead, total...]; computed by Monitoring (ALIGN_DELTA + REDUCE_PERCENTILE_xx)
- the Locust log-based metrics of this run (``test_id`` = run id) -> ``users``,
  ``client_latency_p95_ms``, ``request_rate_rps``, ``failure_rate_rps`` [log:<signature>];
  the ``log:`` dimension keeps them apart from the same metrics computed from raw records.

Cloud Monitoring makes points readable minutes after the fact (AI Platform and Vertex AI
write their serving metrics every minute, and they take a few more to appear). So
``harvest_monitoring`` can wait: with ``wait_s`` it reads again every ``poll_s`` until the
gauges (replicas, CPU, memory: written every minute while a model is deployed) cover the
whole window, for at most ``wait_s`` after the window's end. Its ``Coverage`` says how far
the points reached; a partial harvest is completed by harvesting again later (it replaces
the rows).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from google.api_core.exceptions import NotFound
from google.cloud import monitoring_v3

from caio_operators.hooks.errors import explained
from caio_operators.metrics.families import MonitoredTarget, as_monitored, quote
from caio_operators.metrics.families import monitored_target as monitored_target  # re-export
from caio_operators.metrics.log_metrics import LOG_METRICS
from caio_operators.results import schema as sc

log = logging.getLogger(__name__)

MIN_ALIGNMENT_S = 60
BYTES_PER_MB = 2**20
PERCENTILES = (50, 95, 99)
POLL_S = 30.0
#: series written every minute while a model is deployed, whatever the traffic: when each
#: has a point at the window's end, the window's points have all arrived
GAUGES = ("replicas", "cpu", "memory")
_LATENCY_METRIC = {50: sc.SERVER_LATENCY_P50_MS, 95: sc.SERVER_LATENCY_P95_MS,
                   99: sc.SERVER_LATENCY_P99_MS}


@dataclass(frozen=True)
class SeriesSpec:
    """What to ask Cloud Monitoring for and how to turn the answer into rows."""

    key: str
    metric_type: str
    schema_metric: str
    aligner: str
    reducer: str = "REDUCE_NONE"
    group_by: tuple[str, ...] = ()
    dimension_label: str = ""      # metric label naming the dimension ('' -> fixed below)
    dimension_prefix: str = ""
    dimension: str = sc.DIMENSION_ALL
    scale: float = 1.0
    combine: str = "mean"          # how series that land on one (ts, dimension) merge
    cumulative: bool = False       # values are running totals: report per-second deltas
    add_total: bool = False        # also report the sum over dimensions as 'all'
    log_metric: bool = False       # select by the run's test_id, not the deployment

    def dimension_of(self, labels: Any) -> str:
        if not self.dimension_label:
            return self.dimension
        value = labels.get(self.dimension_label, "") if labels else ""
        return f"{self.dimension_prefix}{value or sc.DIMENSION_ALL}"


@dataclass(frozen=True)
class MonitoringQuery:
    spec: SeriesSpec
    request: monitoring_v3.ListTimeSeriesRequest

    @property
    def period_s(self) -> float:
        # proto-plus hands Duration fields out as timedelta (the stubs say Duration)
        return self.request.aggregation.alignment_period.total_seconds()  # type: ignore[attr-defined]


def series_specs(target: MonitoredTarget, include_log_metrics: bool = True) -> list[SeriesSpec]:
    """The queries of one harvest, for ``target``'s serving product."""
    m = target.metrics
    specs = [
        SeriesSpec("replicas", m.replicas, sc.REPLICAS, "ALIGN_MEAN", "REDUCE_SUM",
                   combine="sum"),
        SeriesSpec("target_replicas", m.target_replicas, sc.TARGET_REPLICAS, "ALIGN_MAX",
                   "REDUCE_SUM", combine="sum"),
        SeriesSpec("cpu", m.cpu, sc.CPU_UTILIZATION_PCT, "ALIGN_MEAN", "REDUCE_MEAN",
                   scale=100.0),
        SeriesSpec("memory", m.memory, sc.MEMORY_MB, "ALIGN_MEAN", "REDUCE_MEAN",
                   scale=1.0 / BYTES_PER_MB),
        SeriesSpec("accelerator", m.accelerator_duty_cycle, sc.GPU_UTILIZATION_PCT,
                   "ALIGN_MEAN", "REDUCE_MEAN", scale=100.0),
        SeriesSpec("responses", m.response_count, sc.SERVER_REQUEST_RATE_RPS, "ALIGN_RATE",
                   "REDUCE_SUM", group_by=("metric.label.response_code",),
                   dimension_label="response_code", dimension_prefix="code-", combine="sum",
                   add_total=True),
        SeriesSpec("predictions", m.prediction_count, sc.SERVER_REQUEST_RATE_RPS, "ALIGN_RATE",
                   "REDUCE_SUM", dimension="predictions", combine="sum"),
    ]
    specs += [
        SeriesSpec(f"latency_p{p}", m.latencies, _LATENCY_METRIC[p], "ALIGN_DELTA",
                   f"REDUCE_PERCENTILE_{p:02d}", group_by=("metric.label.latency_type",),
                   dimension_label="latency_type", scale=m.latency_to_ms)
        for p in PERCENTILES
    ]
    if include_log_metrics:
        specs += [
            SeriesSpec(d.name, d.metric_type, d.schema_metric, "ALIGN_DELTA", "REDUCE_SUM",
                       group_by=("metric.label.signature",), dimension_label="signature",
                       dimension_prefix="log:", cumulative=d.cumulative, log_metric=True)
            for d in LOG_METRICS
        ]
    return specs


def alignment_period_s(interval_s: float) -> int:
    """The smallest multiple of ``interval_s`` that is at least 60 s, in whole seconds."""
    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    period = math.ceil(MIN_ALIGNMENT_S / interval_s - 1e-9) * interval_s
    if abs(period - round(period)) > 1e-6:
        raise ValueError(f"interval_s={interval_s} gives no whole-second alignment period "
                         f">= {MIN_ALIGNMENT_S} s; use a divisor of 60 or whole seconds")
    return round(period)


def _epoch(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no time zone; pass UTC")
    return stamp.timestamp()


def aligned_window(start: Any, end: Any, period_s: int) -> tuple[datetime, datetime]:
    """``[start, end]`` widened to whole periods (epoch multiples), as UTC datetimes."""
    t0, t1 = _epoch(start), _epoch(end)
    if t1 < t0:
        raise ValueError(f"window ends before it starts: {start} > {end}")
    lo = math.floor(t0 / period_s) * period_s
    hi = max(math.ceil(t1 / period_s) * period_s, lo + period_s)
    return datetime.fromtimestamp(lo, UTC), datetime.fromtimestamp(hi, UTC)


def series_filter(spec: SeriesSpec, target: MonitoredTarget) -> str:
    if spec.log_metric:
        return f"metric.type={quote(spec.metric_type)} AND metric.labels.test_id=" \
               f"{quote(target.run_id)}"
    return f"metric.type={quote(spec.metric_type)} AND {target.resource_filter()}"


def build_queries(target: MonitoredTarget, start: Any, end: Any, interval_s: float,
                  include_log_metrics: bool = True) -> list[MonitoringQuery]:
    """One ``ListTimeSeriesRequest`` per series spec for the run window ``[start, end]``."""
    if include_log_metrics and not target.run_id:
        raise ValueError("run_id is needed to select the run's Locust log metrics (test_id)")
    period = alignment_period_s(interval_s)
    lo, hi = aligned_window(start, end, period)
    queries = []
    for spec in series_specs(target, include_log_metrics):
        aggregation = monitoring_v3.Aggregation(
            alignment_period=timedelta(seconds=period),
            # proto-plus enums are Python enums, looked up by name
            per_series_aligner=monitoring_v3.Aggregation.Aligner[spec.aligner],  # type: ignore[misc]
            cross_series_reducer=monitoring_v3.Aggregation.Reducer[spec.reducer],  # type: ignore[misc]
            group_by_fields=list(spec.group_by),
        )
        request = monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{target.project}",
            filter=series_filter(spec, target),
            interval=monitoring_v3.TimeInterval(start_time=lo, end_time=hi),
            aggregation=aggregation,
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        queries.append(MonitoringQuery(spec, request))
    return queries


def point_value(point: monitoring_v3.Point) -> float | None:
    """A point's number: numeric values as float, distributions by their mean.

    None for what carries no number: an empty distribution (no entries in the period),
    a NaN (a percentile of nothing), strings.
    """
    value = point.value
    kind = monitoring_v3.TypedValue.pb(value).WhichOneof("value")
    if kind == "distribution_value":
        dist = value.distribution_value
        result = float(dist.mean) if dist.count > 0 else None
    elif kind in ("double_value", "int64_value"):
        result = float(getattr(value, kind))
    elif kind == "bool_value":
        result = float(value.bool_value)
    else:
        result = None
    return None if result is None or math.isnan(result) else result


def _rows(query: MonitoringQuery, series: Iterable[monitoring_v3.TimeSeries]) -> pd.DataFrame:
    spec, period = query.spec, query.period_s
    rows = []
    for one in series:
        dimension = spec.dimension_of(one.metric.labels)
        for point in one.points:
            value = point_value(point)
            if value is None:
                continue
            # aligned points end on the grid; the row is stamped with the interval's start
            # proto-plus hands Timestamp fields out as datetimes (the stubs say Timestamp)
            start = point.interval.end_time.timestamp() - period  # type: ignore[attr-defined]
            rows.append((start, dimension, value * spec.scale))
    frame = pd.DataFrame(rows, columns=["ts", "dimension", "value"])
    if frame.empty:
        return frame
    frame = frame.groupby(["ts", "dimension"], as_index=False)[["value"]].agg(spec.combine)
    if spec.cumulative:
        frame = _totals_to_rates(frame, period)
    if spec.add_total and not frame.empty:
        total = frame.groupby("ts", as_index=False)[["value"]].sum()
        total["dimension"] = sc.DIMENSION_ALL
        frame = pd.concat([frame, total], ignore_index=True)
    frame["metric"] = spec.schema_metric
    return frame


def _totals_to_rates(frame: pd.DataFrame, period: float) -> pd.DataFrame:
    """Running totals per interval -> per-second increase between consecutive intervals.

    The first interval of each dimension has no predecessor and is dropped; so are gaps
    and decreases (a Locust stats reset), which have no defined rate.
    """
    parts = []
    for _, part in frame.sort_values("ts").groupby("dimension", sort=False):
        step = part["ts"].diff()
        rate = part["value"].diff() / period
        keep = (step == period) & (rate >= 0)
        parts.append(part.assign(value=rate)[keep])
    return pd.concat(parts, ignore_index=True) if parts else frame.iloc[0:0]


def timeseries_from_responses(
    run_id: str,
    responses: Sequence[tuple[MonitoringQuery, Iterable[monitoring_v3.TimeSeries]]],
) -> pd.DataFrame:
    """Rows of the ``timeseries`` table from ``(query, time series)`` pairs."""
    frames = [frame for query, series in responses
              if not (frame := _rows(query, series)).empty]
    if not frames:
        return sc.empty_frame("timeseries")
    long = pd.concat(frames, ignore_index=True)
    long["run_id"] = run_id
    long["ts"] = pd.to_datetime(long["ts"], unit="s", utc=True)
    long = long.sort_values(["metric", "dimension", "ts"], ignore_index=True)
    return sc.conform("timeseries", long)


@dataclass(frozen=True)
class Coverage:
    """How much of the (aligned) window Cloud Monitoring's points covered when read."""

    window_end: float  # epoch s
    covered_until: float | None  # end of the gauges' latest common point; None: no point
    waited_s: float

    @property
    def complete(self) -> bool:
        return self.covered_until is not None and self.covered_until >= self.window_end

    def describe(self) -> str:
        """'complete' or 'partial: ...', as stored in ``runs.monitoring_coverage``."""
        waited = f"after waiting {self.waited_s:.0f} s"
        if self.complete:
            return f"complete ({waited})" if round(self.waited_s) else "complete"
        reached = ("no points yet" if self.covered_until is None else
                   f"points to {_clock(self.covered_until)}")
        return f"partial: {reached} of a window ending {_clock(self.window_end)}, {waited}"


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def covered_until(responses: Sequence[tuple[MonitoringQuery, Sequence[monitoring_v3.TimeSeries]]]
                  ) -> float | None:
    """Where every gauge that has points has one (the earliest of their latest point ends,
    epoch s); None when no gauge has any point yet."""
    ends = []
    for query, series in responses:
        if query.spec.key in GAUGES:
            last = max((p.interval.end_time.timestamp()  # type: ignore[attr-defined]
                        for one in series for p in one.points),
                       default=None)
            if last is not None:
                ends.append(last)
    return min(ends) if ends else None


@dataclass(frozen=True)
class MonitoringHarvest:
    rows: pd.DataFrame
    coverage: Coverage


def _read(client: Any, queries: Sequence[MonitoringQuery]
          ) -> list[tuple[MonitoringQuery, list[monitoring_v3.TimeSeries]]]:
    responses = []
    for query in queries:
        with explained("monitoring_read"):
            try:
                series = list(client.list_time_series(request=query.request))
            except NotFound as exc:  # e.g. a log-based metric nobody wrote to yet
                log.warning("reading %s: not found (%s); no rows for %s",
                            query.spec.metric_type, exc.message, query.spec.key)
                series = []
        responses.append((query, series))
    return responses


def harvest_monitoring(client: Any, scope: MonitoredTarget | Any, start: Any, end: Any,
                       interval_s: float = sc.DEFAULT_INTERVAL_S, *,
                       include_log_metrics: bool = True, wait_s: float = 0.0,
                       poll_s: float = POLL_S, clock: Callable[[], float] = time.time,
                       sleep: Callable[[float], None] = time.sleep) -> MonitoringHarvest:
    """The run's Cloud Monitoring series as ``timeseries`` rows, and how far they reach.

    ``client`` is a ``monitoring_v3.MetricServiceClient`` (``MonitoringHook
    .get_metric_client()``) or anything with its ``list_time_series(request=...)``;
    ``scope`` the deployment (a ``MonitoredTarget``; a RunSpec-like merged with the deploy
    output still works, see ``monitored_target``);
    ``start``/``end`` the load window (tz-aware datetimes or epoch seconds). ``wait_s``:
    read again every ``poll_s`` until the window is covered, at most until ``wait_s``
    after its end (``clock`` and ``sleep`` are injectable for tests).
    """
    target = as_monitored(scope)
    queries = build_queries(target, start, end, interval_s, include_log_metrics)
    window_end = queries[0].request.interval.end_time.timestamp()  # type: ignore[attr-defined]
    give_up_at, began = window_end + wait_s, clock()
    while True:
        responses = _read(client, queries)
        reached = covered_until(responses)
        coverage = Coverage(window_end, reached, clock() - began)
        left = give_up_at - clock()
        if coverage.complete or wait_s <= 0 or left <= 0:
            break
        log.info("waiting for Cloud Monitoring's late points: %s; reading again in %.0f s "
                 "(at most %.0f s more)", coverage.describe(), min(poll_s, left), left)
        sleep(min(poll_s, left))
    frame = timeseries_from_responses(target.run_id, responses)
    log.info("harvested %d rows from Cloud Monitoring (%s, %s); window %s", len(frame),
             target.family, target.label, coverage.describe())
    return MonitoringHarvest(frame, coverage)
