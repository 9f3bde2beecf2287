"""The run's plots as PNG bytes, drawn from ``timeseries`` rows.

matplotlib is imported lazily and used through ``Figure`` objects with the Agg canvas:
no pyplot global state, no display, safe in a worker thread. Time runs along the x axis
in seconds since the first interval of the run. A plot whose metrics are absent says so
instead of failing.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import pandas as pd

from caio_operators.analysis.summary import load_levels
from caio_operators.results import schema as sc
from caio_operators.results.stats import SATURATED_CPU_PCT

FIGSIZE = (8.0, 3.4)
DPI = 100


def _figure(nrows: int = 1, height: float | None = None, ncols: int = 1,
            width: float | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width or FIGSIZE[0], height or FIGSIZE[1] * nrows), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(axes.ravel())


def _png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _t0(timeseries: pd.DataFrame) -> pd.Timestamp | None:
    return timeseries["ts"].min() if not timeseries.empty else None


def _series(timeseries: pd.DataFrame, metric: str, t0, dimension: str | None = None
            ) -> dict[str, pd.DataFrame]:
    """{dimension: frame(x seconds, value)} for ``metric``."""
    rows = timeseries[timeseries["metric"] == metric]
    if dimension is not None:
        rows = rows[rows["dimension"] == dimension]
    out = {}
    for dim, part in rows.groupby("dimension", sort=True):
        part = part.sort_values("ts")
        out[str(dim)] = pd.DataFrame({
            "x": (part["ts"] - t0).dt.total_seconds().to_numpy(),
            "value": part["value"].to_numpy(float)})
    return out


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _time_axes(ax, ylabel: str, title: str) -> None:
    ax.set_xlabel("seconds since start")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)


def _per_dimension(ax, timeseries, metric, t0, ylabel, title, empty) -> bool:
    series = _series(timeseries, metric, t0)
    if not series:
        _no_data(ax, empty)
        ax.set_title(title, fontsize=10)
        return False
    for dim, frame in series.items():
        ax.plot(frame["x"], frame["value"], label=dim, linewidth=1.2)
    _time_axes(ax, ylabel, title)
    ax.legend(fontsize=8, loc="best")
    return True


def cpu_plot(timeseries: pd.DataFrame) -> bytes:
    """CPU utilisation per replica over time, GPU utilisation when there is any, and the
    Locust workers' CPU when they reported it (with the 90% saturation line).

    Without GPU series the figure says "no GPU metrics" rather than drawing an empty panel.
    """
    t0 = _t0(timeseries)
    has_gpu = bool((timeseries["metric"] == sc.GPU_UTILIZATION_PCT).any())
    has_workers = bool((timeseries["metric"] == sc.WORKER_CPU_PCT).any())
    fig, axes = _figure(1 + has_gpu + has_workers)
    _per_dimension(axes[0], timeseries, sc.CPU_UTILIZATION_PCT, t0, "% of one core",
                   "CPU utilisation per replica", "no CPU samples")
    if has_gpu:
        _per_dimension(axes[1], timeseries, sc.GPU_UTILIZATION_PCT, t0, "% duty cycle",
                       "GPU utilisation per replica", "no GPU metrics")
    else:
        axes[0].set_title("CPU utilisation per replica (no GPU metrics)", fontsize=10)
    if has_workers:
        ax = axes[-1]
        _per_dimension(ax, timeseries, sc.WORKER_CPU_PCT, t0, "% of one core",
                       "Load generator CPU per Locust worker (a worker can use one core)",
                       "no worker CPU samples")
        ax.axhline(SATURATED_CPU_PCT, color="#c62828", linestyle="--", linewidth=1)
        ax.set_ylim(0, 110)
    return _png(fig)


def memory_plot(timeseries: pd.DataFrame) -> bytes:
    """Resident memory per replica over time."""
    fig, (ax,) = _figure()
    _per_dimension(ax, timeseries, sc.MEMORY_MB, _t0(timeseries), "MB",
                   "Memory per replica (RSS)", "no memory samples")
    return _png(fig)


def gpu_plot(timeseries: pd.DataFrame) -> bytes:
    """GPU utilisation and memory per replica/device over time (local: NVML per pinned
    replica or shared device; cloud: the accelerators' duty cycle), memory total dashed.

    Every report has it: a run without GPU series says so (no GPU, or no NVML: docs/gpu.md).
    """
    t0 = _t0(timeseries)
    metrics = set(timeseries["metric"].unique()) if not timeseries.empty else set()
    if not metrics & {sc.GPU_UTILIZATION_PCT, sc.GPU_MEMORY_USED_MB}:
        fig, (ax,) = _figure(height=2.0)  # one short box, not two pages of empty axes
        _no_data(ax, "no GPU series in this run (no GPU used, or no NVML)")
        return _png(fig)
    fig, (util, memory) = _figure(2)
    if _per_dimension(util, timeseries, sc.GPU_UTILIZATION_PCT, t0, "% duty cycle",
                      "GPU utilisation per replica/device", "no GPU utilisation series"):
        util.set_ylim(0, 105)
    drawn = _per_dimension(memory, timeseries, sc.GPU_MEMORY_USED_MB, t0, "MB",
                           "GPU memory used per replica/device (total dashed)",
                           "no GPU memory series (cloud: not harvested)")
    if drawn:
        for dim, frame in _series(timeseries, sc.GPU_MEMORY_TOTAL_MB, t0).items():
            memory.plot(frame["x"], frame["value"], linestyle="--", linewidth=0.8,
                        color="0.5", label=f"{dim} total")
        memory.legend(fontsize=8, loc="best")
    return _png(fig)


def latency_plot(timeseries: pd.DataFrame) -> bytes:
    """Client vs server latency (p50, p95, p99) over time."""
    t0 = _t0(timeseries)
    fig, (ax,) = _figure(height=4.0)
    colors = {"p50": "tab:blue", "p95": "tab:orange", "p99": "tab:red"}
    metrics = (
        ("client", "-", (sc.CLIENT_LATENCY_P50_MS, sc.CLIENT_LATENCY_P95_MS,
                         sc.CLIENT_LATENCY_P99_MS)),
        ("server", "--", (sc.SERVER_LATENCY_P50_MS, sc.SERVER_LATENCY_P95_MS,
                          sc.SERVER_LATENCY_P99_MS)),
    )
    drawn = False
    for source, style, names in metrics:
        for name, pct in zip(names, colors, strict=True):
            frame = _series(timeseries, name, t0, sc.DIMENSION_ALL).get(sc.DIMENSION_ALL)
            if frame is None:
                continue
            ax.plot(frame["x"], frame["value"], style, color=colors[pct], linewidth=1.2,
                    label=f"{source} {pct}")
            drawn = True
    if not drawn:
        _no_data(ax, "no latency data")
        ax.set_title("Latency, client vs server", fontsize=10)
    else:
        _time_axes(ax, "ms", "Latency, client (solid) vs server (dashed)")
        ax.legend(fontsize=8, ncol=2, loc="best")
    return _png(fig)


def rates_plot(timeseries: pd.DataFrame) -> bytes:
    """Response rate and failure rate over time."""
    t0 = _t0(timeseries)
    fig, (ax,) = _figure()
    drawn = False
    for metric, label, color in ((sc.REQUEST_RATE_RPS, "requests/s", "tab:blue"),
                                 (sc.FAILURE_RATE_RPS, "failures/s", "tab:red"),
                                 (sc.SERVER_REQUEST_RATE_RPS, "server requests/s", "tab:gray")):
        frame = _series(timeseries, metric, t0, sc.DIMENSION_ALL).get(sc.DIMENSION_ALL)
        if frame is not None:
            ax.plot(frame["x"], frame["value"], color=color, linewidth=1.2, label=label)
            drawn = True
    if drawn:
        _time_axes(ax, "per second", "Response rate and failures")
        ax.legend(fontsize=8, loc="best")
    else:
        _no_data(ax, "no requests recorded")
        ax.set_title("Response rate and failures", fontsize=10)
    return _png(fig)


def users_plot(timeseries: pd.DataFrame) -> bytes:
    """Simulated users over time."""
    fig, (ax,) = _figure(height=2.6)
    frame = _series(timeseries, sc.USERS, _t0(timeseries), sc.DIMENSION_ALL).get(
        sc.DIMENSION_ALL)
    if frame is None:
        _no_data(ax, "no users history (Locust stats history missing)")
        ax.set_title("Users", fontsize=10)
    else:
        ax.step(frame["x"], frame["value"], where="post", color="tab:green", linewidth=1.4)
        _time_axes(ax, "users", "Users")
    return _png(fig)


def latency_vs_throughput_plot(timeseries: pd.DataFrame) -> bytes:
    """The latency-throughput curve: one point per users level (steady intervals only),
    over the per-interval p50 and p95 points coloured by users."""
    fig, (ax,) = _figure(height=4.0)
    rows = timeseries[timeseries["dimension"] == sc.DIMENSION_ALL]
    wide = rows.pivot_table(index="ts", columns="metric", values="value", aggfunc="last") \
        if not rows.empty else pd.DataFrame()
    needed = [sc.REQUEST_RATE_RPS, sc.CLIENT_LATENCY_P50_MS, sc.CLIENT_LATENCY_P95_MS]
    if wide.empty or any(m not in wide for m in needed):
        _no_data(ax, "no latency/throughput data")
        ax.set_title("Latency vs throughput", fontsize=10)
        return _png(fig)
    users = wide[sc.USERS].ffill() if sc.USERS in wide else None
    wide = wide.dropna(subset=[sc.CLIENT_LATENCY_P50_MS])
    colour = users.reindex(wide.index).to_numpy(float) if users is not None else None
    kwargs = {"c": colour, "cmap": "viridis"} if colour is not None else {"color": "tab:blue"}
    points = None
    for metric, marker, label in ((sc.CLIENT_LATENCY_P50_MS, "o", "p50"),
                                  (sc.CLIENT_LATENCY_P95_MS, "^", "p95")):
        points = ax.scatter(wide[sc.REQUEST_RATE_RPS], wide[metric], marker=marker, s=14,
                            alpha=0.35, label=f"{label} per interval", **kwargs)
    if colour is not None and points is not None:
        fig.colorbar(points, ax=ax, label="users")
    # Per-interval rates are whole numbers at low rates; the levels carry the curve.
    levels = load_levels(timeseries)
    if levels:
        rates = [lv["throughput_rps"] for lv in levels]
        for key, marker, label in (("p50_ms", "o", "p50"), ("p95_ms", "^", "p95")):
            ax.plot(rates, [lv[key] for lv in levels], marker=marker, color="black",
                    linewidth=1.2, markersize=7, label=f"{label} per users level")
        for lv, rate in zip(levels, rates, strict=True):
            ax.annotate(f"{lv['users']} users", (rate, lv["p95_ms"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
        ax.legend(fontsize=7, loc="upper left")
    ax.set_xlabel("successful requests/s")
    ax.set_ylabel("latency ms")
    ax.set_title("Latency vs throughput (o p50, ^ p95)", fontsize=10)
    ax.grid(True, alpha=0.3)
    return _png(fig)


def peak_search_plot(timeseries: pd.DataFrame) -> bytes:
    """A peak search, window by window: the latency at the SLO percentile against the
    offered rate (left) and the offered rate and throughput over time (right), each step
    green when its rate passed, red when it failed."""
    fig, (left, right) = _figure(height=4.0, ncols=2, width=11.0)
    peak = timeseries[timeseries["metric"].str.startswith("peak_")]
    wide = peak.pivot_table(index=["dimension", "ts"], columns="metric", values="value",
                            aggfunc="last").reset_index() if not peak.empty else pd.DataFrame()
    if wide.empty or sc.PEAK_OFFERED_RPS not in wide:
        _no_data(left, "no peak search in this run")
        return _png(fig)
    t0 = wide["ts"].min()
    passed = wide.groupby("dimension")[sc.PEAK_STEP_PASSED].max() \
        if sc.PEAK_STEP_PASSED in wide else pd.Series(dtype=float)
    for dimension, part in wide.groupby("dimension", sort=False):
        verdict = passed.get(dimension)
        colour = "tab:gray" if pd.isna(verdict) else ("tab:green" if verdict else "tab:red")
        if sc.PEAK_LATENCY_MS in part:
            left.scatter(part[sc.PEAK_OFFERED_RPS], part[sc.PEAK_LATENCY_MS], s=16,
                         color=colour, alpha=0.7)
        x = (part["ts"] - t0).dt.total_seconds()
        right.plot(x, part[sc.PEAK_OFFERED_RPS], color=colour, linewidth=2.0)
        if sc.PEAK_THROUGHPUT_RPS in part:
            right.plot(x, part[sc.PEAK_THROUGHPUT_RPS], color="black", linewidth=0.8,
                       linestyle="--")
    left.set_xlabel("offered req/s")
    left.set_ylabel("latency ms (SLO percentile)")
    left.set_yscale("log")
    left.set_title("Each window: latency vs offered rate (green passed, red failed)",
                   fontsize=9)
    left.grid(True, alpha=0.3)
    right.set_xlabel("seconds since the first window")
    right.set_ylabel("req/s")
    right.set_title("Offered rate per step (colour) and throughput (dashed)", fontsize=9)
    right.grid(True, alpha=0.3)
    return _png(fig)


#: (key, title, function) in report order
PLOTS: Sequence[tuple[str, str, Callable[[pd.DataFrame], bytes]]] = (
    ("latency", "Latency over time, client vs server", latency_plot),
    ("rates", "Response rate and failures", rates_plot),
    ("users", "Users", users_plot),
    ("latency_vs_throughput", "Latency vs throughput", latency_vs_throughput_plot),
    ("peak_search", "Peak search: every window and step verdict", peak_search_plot),
    ("cpu", "CPU and GPU utilisation per replica; CPU per Locust worker", cpu_plot),
    ("memory", "Memory per replica", memory_plot),
    ("gpu", "GPU utilisation and memory per replica/device", gpu_plot),
)


def all_plots(timeseries: pd.DataFrame) -> dict[str, bytes]:
    """Every plot of the report, as PNG bytes keyed by name (the peak search plot only for
    runs that searched)."""
    searched = not timeseries.empty and (timeseries["metric"] == sc.PEAK_OFFERED_RPS).any()
    return {key: fn(timeseries) for key, _, fn in PLOTS
            if key != "peak_search" or searched}
