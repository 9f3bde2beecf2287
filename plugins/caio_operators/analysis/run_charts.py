"""The charts of a run's report, from its ``timeseries`` rows and its summary.

One chart = one function ``(timeseries, summary) -> Chart | None`` (None: the chart does not
apply to this run, e.g. the peak search's for a run that did not search); ``RUN_CHARTS``
lists them in report order. Time runs along x in seconds since the run's first interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from caio_operators.analysis.charts import Chart, Series
from caio_operators.results import schema as sc
from caio_operators.results.stats import SATURATED_CPU_PCT
from caio_operators.spec import OPEN_LOOP_SHAPES

ChartFn = Callable[[pd.DataFrame, Mapping[str, Any]], Chart | None]
SECONDS = "seconds since start"


def t0_of(timeseries: pd.DataFrame) -> pd.Timestamp | None:
    return timeseries["ts"].min() if not timeseries.empty else None


def metric_series(timeseries: pd.DataFrame, metric: str, dimension: str | None = None
                  ) -> dict[str, tuple[list[float], list[float]]]:
    """``{dimension: (seconds since the run's start, values)}`` of ``metric``."""
    t0 = t0_of(timeseries)
    if t0 is None:  # no timeseries rows
        return {}
    rows = timeseries[timeseries["metric"] == metric]
    if dimension is not None:
        rows = rows[rows["dimension"] == dimension]
    out = {}
    for dim, part in rows.groupby("dimension", sort=True):
        part = part.sort_values("ts")
        out[str(dim)] = ((part["ts"] - t0).dt.total_seconds().tolist(),
                         part["value"].astype(float).tolist())
    return out


def _all(timeseries: pd.DataFrame, metric: str) -> tuple[list[float], list[float]] | None:
    return metric_series(timeseries, metric, sc.DIMENSION_ALL).get(sc.DIMENSION_ALL)


def _lines(timeseries: pd.DataFrame, specs: Sequence[tuple[str, str, str | None, bool]],
           kind: str = "line") -> tuple[Series, ...]:
    """(metric, label, colour, dashed) -> one series each for those the run has."""
    out = []
    for metric, label, color, dash in specs:
        found = _all(timeseries, metric)
        if found:
            out.append(Series(label, found[0], found[1], kind=kind, color=color, dash=dash))
    return tuple(out)


COLORS = {"p50": "#1f77b4", "p95": "#ff7f0e", "p99": "#d62728"}


def latency_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> Chart:
    """Client (solid) and server (dashed) latency p50/p95/p99 over time."""
    specs = [(metric, f"{source} {pct}", COLORS[pct], source == "server")
             for source, metrics in (
                 ("client", (sc.CLIENT_LATENCY_P50_MS, sc.CLIENT_LATENCY_P95_MS,
                             sc.CLIENT_LATENCY_P99_MS)),
                 ("server", (sc.SERVER_LATENCY_P50_MS, sc.SERVER_LATENCY_P95_MS,
                             sc.SERVER_LATENCY_P99_MS)))
             for metric, pct in zip(metrics, COLORS, strict=True)]
    return Chart("latency", "Latency over time, client (solid) vs server (dashed)", SECONDS,
                 "ms", _lines(timeseries, specs), empty="no latency data")


def rates_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> Chart:
    """Requests started, failures, server-handled requests and goodput per second."""
    slo = summary.get("goodput_slo_ms")
    specs = [(sc.REQUEST_RATE_RPS, "requests/s", "#1f77b4", False),
             (sc.FAILURE_RATE_RPS, "failures/s", "#d62728", False),
             (sc.SERVER_REQUEST_RATE_RPS, "server requests/s", "#7f7f7f", True),
             (sc.GOODPUT_RPS, f"goodput/s (within {slo:g} ms)" if slo else "goodput/s",
              "#2ca02c", False)]
    return Chart("rates", "Response rate, failures and goodput", SECONDS, "per second",
                 _lines(timeseries, specs), empty="no requests recorded",
                 caption="goodput: successful requests that met the latency SLO")


def users_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> Chart:
    """Simulated users over time (closed-loop shapes)."""
    return Chart("users", "Users", SECONDS, "users",
                 _lines(timeseries, [(sc.USERS, "users", "#2ca02c", False)], kind="step"),
                 empty="no users history (Locust stats history missing, or an open-loop "
                       "shape)", height=200)


def _wide(timeseries: pd.DataFrame) -> pd.DataFrame:
    rows = timeseries[timeseries["dimension"] == sc.DIMENSION_ALL]
    if rows.empty:
        return pd.DataFrame()
    return rows.pivot_table(index="ts", columns="metric", values="value", aggfunc="last")


def latency_vs_throughput_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]
                                ) -> Chart:
    """Per-interval p50/p95 against successful req/s (points), and the curve through the
    users levels' steady figures (lines): where latency turns up, capacity is reached."""
    wide = _wide(timeseries)
    series: list[Series] = []
    needed = (sc.REQUEST_RATE_RPS, sc.FAILURE_RATE_RPS, sc.CLIENT_LATENCY_P50_MS)
    if not wide.empty and all(m in wide for m in needed):
        wide = wide.dropna(subset=[sc.CLIENT_LATENCY_P50_MS])
        ok_rate = (wide[sc.REQUEST_RATE_RPS] - wide[sc.FAILURE_RATE_RPS].fillna(0)).tolist()
        for metric, label in ((sc.CLIENT_LATENCY_P50_MS, "p50"),
                              (sc.CLIENT_LATENCY_P95_MS, "p95")):
            if metric in wide:
                series.append(Series(f"{label} per interval", ok_rate, wide[metric].tolist(),
                                     kind="points", color=COLORS[label] + "80"))
    levels = summary.get("levels") or []  # none for open-loop shapes (summarize)
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95")):
        if levels:
            series.append(Series(f"{label} per users level",
                                 [lv["throughput_rps"] for lv in levels],
                                 [lv[key] for lv in levels], color=COLORS[label]))
    return Chart("latency_vs_throughput", "Latency vs throughput", "successful requests/s",
                 "latency ms", tuple(series), empty="no latency/throughput data", height=340,
                 caption="points: one per interval; lines: the steady figures of each users "
                         "level" if levels else "points: one per interval")


def open_loop_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> Chart | None:
    """Open-loop runs: the rate offered (sends by intended time, dropped ones included)
    against the rate achieved (successful responses) and goodput, and the sends the
    generator dropped because they could not start in time or hit max_in_flight."""
    dropped = metric_series(timeseries, sc.DROPPED_RPS)
    if summary.get("load_shape") not in OPEN_LOOP_SHAPES and not dropped:
        return None
    wide = _wide(timeseries)
    series: list[Series] = []
    t0 = t0_of(timeseries)
    if t0 is not None and not wide.empty and sc.REQUEST_RATE_RPS in wide:
        x = (pd.DatetimeIndex(wide.index) - t0).total_seconds().tolist()
        offered = wide[sc.REQUEST_RATE_RPS]
        series.append(Series("offered req/s", x, offered.tolist(), color="#7f7f7f", dash=True))
        achieved = offered - wide[sc.FAILURE_RATE_RPS].fillna(0) \
            if sc.FAILURE_RATE_RPS in wide else offered
        series.append(Series("achieved (successful) req/s", x, achieved.tolist(),
                             color="#1f77b4"))
        if sc.GOODPUT_RPS in wide:
            series.append(Series("goodput req/s", x, wide[sc.GOODPUT_RPS].tolist(),
                                 color="#2ca02c"))
    names = {"late": ("dropped: could not start in time", "#d62728"),
             "in_flight_cap": ("dropped: max_in_flight reached", "#9467bd")}
    for dim, (x, y) in dropped.items():
        label, color = names.get(dim, (dim, None))
        series.append(Series(f"{label} /s", x, y, color=color))
    return Chart("open_loop", "Offered vs achieved rate", SECONDS, "per second",
                 tuple(series), empty="no open-loop records",
                 caption="sends that started late but within the drop limit are sent, so "
                         "they count as offered and achieved (their latency runs from the "
                         "intended send time)")


def _peak_wide(timeseries: pd.DataFrame) -> pd.DataFrame:
    peak = timeseries[timeseries["metric"].str.startswith("peak_")]
    if peak.empty:
        return pd.DataFrame()
    return peak.pivot_table(index=["dimension", "ts"], columns="metric", values="value",
                            aggfunc="last").reset_index()


def _peak_groups(wide: pd.DataFrame):
    """(label, colour, rows) for the passed, failed and unjudged steps' windows."""
    passed = wide.groupby("dimension")[sc.PEAK_STEP_PASSED].max() \
        if sc.PEAK_STEP_PASSED in wide else pd.Series(dtype=float)
    verdict = wide["dimension"].map(passed)
    for label, color, mask in (("passed step", "#2ca02c", verdict == 1),
                               ("failed step", "#d62728", verdict == 0),
                               ("step not judged", "#7f7f7f", verdict.isna())):
        if mask.any():
            yield label, color, wide[mask]


def peak_latency_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> Chart | None:
    """A peak search's windows: latency at the SLO percentile against the offered rate."""
    wide = _peak_wide(timeseries)
    if wide.empty or sc.PEAK_OFFERED_RPS not in wide:
        return None
    series = tuple(
        Series(f"window of a {label}", rows[sc.PEAK_OFFERED_RPS].tolist(),
               rows[sc.PEAK_LATENCY_MS].tolist(), kind="points", color=color)
        for label, color, rows in _peak_groups(wide) if sc.PEAK_LATENCY_MS in rows)
    return Chart("peak_latency", "Peak search: every window, latency vs offered rate",
                 "offered req/s", "latency ms (SLO percentile, log)", series, y_log=True)


def peak_rates_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> Chart | None:
    """A peak search over time: each window's offered rate (by step verdict) and
    throughput."""
    wide = _peak_wide(timeseries)
    if wide.empty or sc.PEAK_OFFERED_RPS not in wide:
        return None
    t0 = wide["ts"].min()
    series = []
    if sc.PEAK_THROUGHPUT_RPS in wide:  # first: the offered points are drawn over it
        rows = wide.sort_values("ts")
        series.append(Series("throughput", (rows["ts"] - t0).dt.total_seconds().tolist(),
                             rows[sc.PEAK_THROUGHPUT_RPS].tolist(), color="#000000",
                             dash=True))
    series += [Series(f"offered, {label}", (rows["ts"] - t0).dt.total_seconds().tolist(),
                      rows[sc.PEAK_OFFERED_RPS].tolist(), kind="points", color=color)
               for label, color, rows in _peak_groups(wide)]
    return Chart("peak_rates", "Peak search: offered rate per step and throughput",
                 "seconds since the first window", "req/s", tuple(series))


def _per_dimension(timeseries: pd.DataFrame, metric: str) -> tuple[Series, ...]:
    return tuple(Series(dim, x, y) for dim, (x, y) in metric_series(timeseries, metric).items())


def cpu_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> Chart:
    """CPU per replica over time."""
    return Chart("cpu", "CPU utilisation per replica", SECONDS, "% of one core",
                 _per_dimension(timeseries, sc.CPU_UTILIZATION_PCT), empty="no CPU samples")


def gpu_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> Chart:
    """GPU duty cycle per replica/device (local: NVML per pinned replica or shared device;
    cloud: the accelerators'). Every report has it: a run without says so (docs/gpu.md)."""
    return Chart("gpu", "GPU utilisation per replica/device", SECONDS, "% duty cycle",
                 _per_dimension(timeseries, sc.GPU_UTILIZATION_PCT), y_min=0, y_max=105,
                 empty="no GPU series in this run (no GPU used, or no NVML)")


def gpu_memory_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> Chart | None:
    """GPU memory used per replica/device, each device's total dashed; only for runs with
    GPU series (cloud runs have the duty cycle only: their memory is not harvested)."""
    used = _per_dimension(timeseries, sc.GPU_MEMORY_USED_MB)
    if not used:
        return None
    totals = tuple(Series(f"{dim} total", x, y, color="#888888", dash=True)
                   for dim, (x, y) in metric_series(timeseries, sc.GPU_MEMORY_TOTAL_MB).items())
    return Chart("gpu_memory", "GPU memory used per replica/device (total dashed)", SECONDS,
                 "MB", (*used, *totals), y_min=0)


def worker_cpu_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> Chart | None:
    """Each Locust worker's CPU, with the saturation line: above it the figures describe
    the load generator, not the target."""
    series = _per_dimension(timeseries, sc.WORKER_CPU_PCT)
    if not series:
        return None
    xs = [x for s in series for x in s.x]
    line = Series(f"saturated ({SATURATED_CPU_PCT:g}%)", [min(xs), max(xs)],
                  [SATURATED_CPU_PCT] * 2, color="#c62828", dash=True)
    return Chart("worker_cpu", "Load generator CPU per Locust worker (a worker can use one "
                 "core)", SECONDS, "% of one core", (*series, line), y_min=0, y_max=110)


def memory_chart(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> Chart:
    """Resident memory per replica over time."""
    return Chart("memory", "Memory per replica (RSS)", SECONDS, "MB",
                 _per_dimension(timeseries, sc.MEMORY_MB), empty="no memory samples")


#: the run report's charts, in order
RUN_CHARTS: tuple[ChartFn, ...] = (
    latency_chart, rates_chart, users_chart, latency_vs_throughput_chart, open_loop_chart,
    peak_latency_chart, peak_rates_chart, cpu_chart, gpu_chart, gpu_memory_chart,
    worker_cpu_chart, memory_chart,
)


def run_charts(timeseries: pd.DataFrame, summary: Mapping[str, Any],
               charts: Sequence[ChartFn] = RUN_CHARTS) -> list[Chart]:
    """The charts that apply to this run."""
    return [c for c in (fn(timeseries, summary) for fn in charts) if c is not None]
