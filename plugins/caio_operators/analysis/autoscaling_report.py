"""The report's autoscaling section: charts and tables (``analysis/autoscaling.py`` figures).

Small functions: ``autoscaling_charts`` (interactive charts, ``analysis/charts.py``),
``autoscaling_html`` (the HTML fragment placing them, with the tables), and
``section_for_run`` that the report calls with the run's rows and params.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from caio_operators.analysis import autoscaling as asc
from caio_operators.analysis import cost as costs
from caio_operators.analysis.charts import Chart, Section, Series, figure
from caio_operators.analysis.run_charts import SECONDS
from caio_operators.spec import OPEN_LOOP_SHAPES

log = logging.getLogger(__name__)

TITLE = "Autoscaling"


def autoscaling_charts(timeseries: pd.DataFrame, summary: Mapping[str, Any]
                       ) -> tuple[Chart, ...]:
    """Replicas and target replicas; offered and achieved load; client p99: one chart each
    on the same time axis (seconds since the run's first interval)."""
    frame = asc.grid(timeseries)
    t = frame["t"].tolist()

    def series(column: str, label: str, **style: Any) -> tuple[Series, ...]:
        if column not in frame or not frame[column].notna().any():
            return ()
        return (Series(label, t, frame[column].tolist(), **style),)

    steps = ", ".join(asc.fmt_seconds(x) for x in summary.get("load_steps_s") or [])
    outs = "; ".join(
        f"{o['from']}->{o['to']} from {asc.fmt_seconds(o['load_step_s'])} to "
        f"{asc.fmt_seconds(o['ready_s'])}" for o in summary.get("scale_outs") or [])
    return (
        Chart("autoscaling_replicas", "Replicas (target replicas dashed)", SECONDS,
              "replicas", (*series("replicas", "replicas", kind="step"),
                           *series("target_replicas", "target replicas", kind="step",
                                   dash=True)), y_min=0,
              caption=f"scale-outs: {outs}" if outs else "", height=220),
        Chart("autoscaling_load", "Offered and achieved load", SECONDS, "req/s",
              (*series("offered_rps", "offered req/s", color="#888888"),
               *series("achieved_rps", "achieved req/s", color="#2e7d32")), y_min=0,
              caption=f"load steps at {steps}" if steps else "", height=220),
        Chart("autoscaling_p99", "Client p99 while scaling", SECONDS, "ms",
              series("p99_ms", "p99 ms", color="#c62828"), y_min=0, height=220),
    )


def _n(value: Any, spec: str = "{:.0f}") -> str:
    return "-" if value is None else spec.format(value)


def autoscaling_html(summary: Mapping[str, Any], chart_list: Sequence[Chart],
                     currency: str = "USD") -> str:
    """The section: its charts, a row per scale-out and scale-in, and replica-seconds."""
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
    return (
        f"<h2 id='autoscaling'>{TITLE}</h2>"
        + "".join(figure(c) for c in chart_list) +
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


def section_for_run(timeseries: pd.DataFrame, params: Mapping[str, Any]) -> Section | None:
    """The autoscaling section of a run's report; None when neither replicas nor load
    changed."""
    price, currency = replica_price(params)
    open_loop = params.get("load_shape") in OPEN_LOOP_SHAPES if params.get("load_shape") \
        else None
    summary = asc.autoscaling_summary(timeseries, float(params.get("slo_ms") or 500.0),
                                      price, open_loop=open_loop)
    if summary is None:
        return None
    chart_list = autoscaling_charts(timeseries, summary)
    return Section(autoscaling_html(summary, chart_list, currency), chart_list)
