"""The report's autoscaling section: a plot and a table (``analysis/autoscaling.py`` figures).

Small functions like the plots of ``plots.py``: ``autoscaling_plot`` (PNG bytes) and
``autoscaling_html`` (an HTML fragment with the plot inline), and ``section_for_run`` that
the report calls with the run's rows and params. matplotlib is imported lazily.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from caio_operators.analysis import autoscaling as asc
from caio_operators.analysis import cost as costs
from caio_operators.spec import OPEN_LOOP_SHAPES

log = logging.getLogger(__name__)

TITLE = "Autoscaling"


def autoscaling_plot(timeseries: pd.DataFrame, summary: Mapping[str, Any]) -> bytes:
    """Top: replicas and target replicas, with offered and achieved load on a second axis;
    bottom: client p99. Dotted lines: load steps; shaded: each scale-out from its load step
    until its replicas served."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frame = asc.grid(timeseries)
    fig = Figure(figsize=(8.0, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.step(frame["t"], frame["replicas"], where="post", label="replicas", linewidth=1.6)
    if frame["target_replicas"].notna().any():
        top.step(frame["t"], frame["target_replicas"], where="post", linestyle="--",
                 label="target replicas", linewidth=1.2)
    top.set_ylabel("replicas")
    load = top.twinx()
    load.plot(frame["t"], frame["offered_rps"], color="0.55", linewidth=1, label="offered req/s")
    load.plot(frame["t"], frame["achieved_rps"], color="#2e7d32", linewidth=1,
              label="achieved req/s")
    load.set_ylabel("req/s")
    bottom.plot(frame["t"], frame["p99_ms"], color="#c62828", linewidth=1.2, label="p99 ms")
    bottom.set_ylabel("client p99 (ms)")
    bottom.set_xlabel("seconds since start")
    for step in summary.get("load_steps_s") or []:
        for ax in (top, bottom):
            ax.axvline(step, color="0.3", linestyle=":", linewidth=1)
    for out in summary.get("scale_outs") or []:
        start = out["load_step_s"] if out["load_step_s"] is not None else out["decided_s"]
        end = out["ready_s"] if out["ready_s"] is not None else frame["t"].max()
        for ax in (top, bottom):
            ax.axvspan(start, end, color="#ffb300", alpha=0.15)
    handles = top.get_legend_handles_labels()
    extra = load.get_legend_handles_labels()
    top.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="upper left")
    top.set_title("Replicas and load (shaded: load step until the scale-out served)",
                  fontsize=10)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _n(value: Any, spec: str = "{:.0f}") -> str:
    return "-" if value is None else spec.format(value)


def autoscaling_html(summary: Mapping[str, Any], png: bytes, currency: str = "USD") -> str:
    """The section: the plot, a row per scale-out and scale-in, and replica-seconds."""
    e = html.escape
    outs = "".join(
        f"<tr><td>{o['from']} &rarr; {o['to']}</td><td>{_n(o['load_step_s'])}</td>"
        f"<td>{_n(o['decided_s'])}</td><td>{_n(o['ready_s'])}</td>"
        f"<td>{_n(o['time_to_scale_s'])}</td><td>{_n(o['p99_before_ms'])}</td>"
        f"<td>{_n(o['p99_during_ms'])}</td><td>{_n(o['p99_after_ms'])}</td></tr>"
        for o in summary.get("scale_outs") or [])
    ins = "".join(
        f"<tr><td>{i['from']} &rarr; {i['to']}</td><td>{_n(i['decided_s'])}</td>"
        f"<td>{_n(i['ready_s'])}</td></tr>" for i in summary.get("scale_ins") or [])
    price = summary.get("price_per_replica_hour")
    cost = summary.get("extra_cost")
    usage = (
        f"<tr><th>replica-seconds used</th><td>{_n(summary['replica_seconds'])}</td></tr>"
        f"<tr><th>fewest that met the SLO ({_n(summary['slo_ms'], '{:g}')} ms p99)</th>"
        f"<td>{_n(summary['min_replica_seconds'])}</td></tr>"
        f"<tr><th>measured capacity per replica</th>"
        f"<td>{_n(summary['capacity_rps_per_replica'], '{:.3g}')} req/s</td></tr>"
        f"<tr><th>cost of the difference</th><td>"
        f"{e(_n(cost, '{:.4f}') + ' ' + currency) if cost is not None else '-'}"
        f"{e(f' at {price:g} {currency} per replica-hour') if price is not None else ''}"
        "</td></tr>")
    image = base64.b64encode(png).decode("ascii")
    return (
        f"<h2 id='autoscaling'>{TITLE}</h2>"
        f"<figure><img alt='{TITLE}' src='data:image/png;base64,{image}'>"
        f"<figcaption>{TITLE}: replicas against load and latency</figcaption></figure>"
        "<h3>Scale-outs</h3><table><tr><th>replicas</th><th>load step (s)</th>"
        "<th>decided (s)</th><th>serving (s)</th><th>time to scale (s)</th>"
        "<th>p99 before (ms)</th><th>p99 during (ms)</th><th>p99 after (ms)</th></tr>"
        f"{outs or '<tr><td colspan=8>none</td></tr>'}</table>"
        "<h3>Scale-ins</h3><table><tr><th>replicas</th><th>decided (s)</th>"
        f"<th>done (s)</th></tr>{ins or '<tr><td colspan=3>none</td></tr>'}</table>"
        f"<h3>Replica-seconds</h3><table>{usage}</table>"
        "<p class='sub'>Times in seconds since the run's first interval; p99: the highest "
        "interval p99 in the window (before: the window before the load step; during: until "
        "the new replicas served; after: the window after).</p>")


def replica_price(params: Mapping[str, Any]) -> tuple[float | None, str]:
    """The hourly price of one replica: a ``machine_type`` node (plus its accelerators) of
    the price table; the local target is priced as if each replica were such a node.
    ``(None, currency)`` when the table lacks it."""
    try:
        prices = costs.load_price_table(str(params.get("price_table") or ""))
        price, _ = costs.hourly_cost(
            prices, target="vertex", replicas=1,
            machine_type=str(params.get("machine_type") or "n1-standard-4"),
            accelerator_type=str(params.get("accelerator_type") or ""),
            accelerator_count=int(params.get("accelerator_count") or 0))
    except costs.PriceTableError as exc:
        log.warning("autoscaling section without cost: %s", exc)
        return None, "USD"
    return price, prices.currency


def section_for_run(timeseries: pd.DataFrame, params: Mapping[str, Any]) -> str:
    """The autoscaling section of a run's report; "" when neither replicas nor load
    changed."""
    price, currency = replica_price(params)
    open_loop = params.get("load_shape") in OPEN_LOOP_SHAPES if params.get("load_shape") \
        else None
    summary = asc.autoscaling_summary(timeseries, float(params.get("slo_ms") or 500.0),
                                      price, open_loop=open_loop)
    if summary is None:
        return ""
    return autoscaling_html(summary, autoscaling_plot(timeseries, summary), currency)
