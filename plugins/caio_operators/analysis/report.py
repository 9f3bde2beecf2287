"""Analyse a run from the warehouse into a self-contained HTML report and ``summary.json``.

The report reads the run back from the warehouse, never from raw files or XCom, so it
looks the same whichever backend produced the rows. The HTML has no external assets: CSS
is inline, the interactive charts (``run_charts``) embed their data and the charting
library once (``charts.assets``), and every piece of text is escaped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from caio_operators import benchmark, storage
from caio_operators.analysis import charts, run_charts
from caio_operators.analysis.autoscaling_report import section_for_run as autoscaling_section
from caio_operators.analysis.page import document, e, fmt, kv_table
from caio_operators.analysis.summary import (
    generator_warning,
    host_warning,
    summarize,
    summary_text,
)
from caio_operators.layout import RunLayout
from caio_operators.results.warehouse import open_warehouse

log = logging.getLogger(__name__)

#: params that name the model under test: always shown next to the benchmark's own
MODEL_PARAMS = ("model_name", "model_version", "model_source", *benchmark.IDENTITY)


def _json_field(text: Any) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {"(unparsed)": text}
    return value if isinstance(value, dict) else {"value": value}


def _figures_table(s: Mapping[str, Any]) -> str:
    err = "-" if s.get("error_rate") is None else f"{s['error_rate']:.2%}"
    rows = [
        ("requests", fmt(s.get("requests"))), ("failures", fmt(s.get("failures"))),
        ("error rate", err),
        ("throughput (steady window)", f"{fmt(s.get('throughput_rps'), '{:.2f}')} req/s"),
        ("goodput (successful within the SLO)",
         f"{fmt(s.get('goodput_rps'), '{:.2f}')} req/s within "
         f"{fmt(s.get('goodput_slo_ms'), '{:g}')} ms"),
        ("duration", f"{fmt(s.get('duration_s'))} s"),
        ("peak CPU (busiest replica)", f"{fmt(s.get('peak_cpu_pct'), '{:.0f}')} % of a core"),
        ("peak memory", f"{fmt(s.get('peak_memory_mb'), '{:.0f}')} MB"),
        ("peak GPU utilisation (busiest GPU)",
         f"{fmt(s.get('peak_gpu_pct'), '{:.0f}')} % duty cycle"),
        ("max CPU (busiest Locust worker)",
         f"{fmt(s.get('max_worker_cpu_pct'), '{:.0f}')} % of a core"),
        ("machine CPU during the load (all / other processes)",
         f"{fmt(s.get('host_cpu_pct'), '{:.0f}')} / "
         f"{fmt(s.get('host_other_cpu_pct'), '{:.0f}')} % of a core"),
        ("other caio loads on this machine meanwhile", s.get("overlapping_runs") or "none"),
    ]
    if s.get("monitoring_coverage"):
        rows.append(("Cloud Monitoring series", s["monitoring_coverage"]))
    body = "".join(f"<tr><th>{e(k)}</th><td class='num'>{e(v)}</td></tr>" for k, v in rows)
    lat_keys = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")
    heads = "".join(f"<th>{e(k.removesuffix('_ms').replace('p999', 'p99.9'))}</th>"
                    for k in lat_keys)
    client = "".join(f"<td class='num'>{e(fmt(s.get(k)))}</td>" for k in lat_keys)
    server = "".join(
        f"<td class='num'>{e(fmt(s.get('server_' + k)) if k in ('p50_ms', 'p99_ms') else '')}"
        "</td>" for k in lat_keys)
    latency = (f"<table><tr><th>latency ms</th>{heads}</tr><tr><th>client</th>{client}</tr>"
               f"<tr><th>server</th>{server}</tr></table>")
    return f"<table>{body}</table>{latency}"


def _levels_table(levels: list[Mapping[str, Any]]) -> str:
    if not levels:
        return ""
    head = ("<tr><th>users</th><th>intervals</th><th>req/s</th><th>p50 ms</th>"
            "<th>p95 ms</th><th>errors</th></tr>")
    rows = "".join(
        "<tr>" + "".join(f"<td class='num'>{e(v)}</td>" for v in (
            lv["users"], lv["intervals"], fmt(lv["throughput_rps"]), fmt(lv["p50_ms"]),
            fmt(lv["p95_ms"]),
            "-" if lv.get("error_rate") is None else f"{lv['error_rate']:.1%}")) + "</tr>"
        for lv in levels)
    return f"<h3>Per users level</h3><table>{head}{rows}</table>"


def _peak_table(s: Mapping[str, Any]) -> str:
    search = s.get("peak")
    if not search:
        return ""
    head = ("<tr><th>step</th><th>offered req/s</th><th>verdict</th><th>req/s</th>"
            f"<th>p{e(fmt(s.get('slo_percentile'), '{:g}'))} ms</th><th>errors</th>"
            "<th>windows</th><th>reason</th></tr>")
    rows = "".join(
        "<tr>" + "".join(f"<td class='num'>{e(v)}</td>" for v in (
            st["step"], fmt(st["rate"]), "pass" if st["passed"] else "FAIL",
            fmt(st["throughput_rps"]), fmt(st.get("latency_ms")),
            "-" if st.get("error_rate") is None else f"{st['error_rate']:.1%}",
            st["windows"])) + f"<td>{e(st['reason'])}</td></tr>"
        for st in search["steps"])
    return (f"<h3>Peak search: {e(fmt(s.get('max_sustainable_rps'), '{:.4g}'))} req/s "
            f"sustained ({e(search.get('status'))})</h3><table>{head}{rows}</table>")


def _verdict_section(verdict: Mapping[str, Any] | None) -> str:
    """The verdict against the baseline it used (or why there was none) and the cost."""
    if not verdict:
        return ("<h2>Verdict</h2><p class='sub'>Not judged: a failed run is never compared."
                "</p>")
    base = verdict.get("baseline_run_id")
    against = (f"against {base} ({verdict.get('baseline_rule')} baseline)" if base else
               f"no baseline used ({verdict.get('baseline_rule')} rule)")
    rows = [("verdict", verdict.get("verdict")), ("baseline", against),
            ("why", verdict.get("reason")),
            ("cost per hour", fmt(verdict.get("cost_per_hour"), "{:.4g}")),
            ("cost per 1,000 predictions", fmt(verdict.get("cost_per_1k"), "{:.4g}")),
            ("cost basis", f"{verdict.get('cost_basis') or '-'} "
                           f"({fmt(verdict.get('cost_basis_rps'), '{:.4g}')} req/s)"),
            ("cost note", verdict.get("cost_note"))]
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    return f"<h2>Verdict</h2><table>{body}</table>"


def _load_words(s: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """The load in a few words, from the shape's own params."""
    shape = s.get("load_shape") or params.get("load_shape")
    duration = params.get("duration_s") or s.get("duration_s")
    length = f" for {fmt(duration, '{:.0f}')} s" if duration else ""
    if shape == "open_rate":
        profile = params.get("rate_profile") or "constant"
        return (f"an open-loop {profile} rate of {fmt(params.get('rate'), '{:g}')} req/s"
                f"{length}")
    if shape == "peak_search":
        return (f"a peak search up to {fmt(params.get('max_rate'), '{:g}')} req/s for the "
                f"highest rate with p{fmt(s.get('slo_percentile'), '{:g}')} under "
                f"{fmt(s.get('slo_ms'), '{:g}')} ms")
    users = s.get("users") or params.get("users")
    return f"a {shape or 'closed-loop'} load of up to {users} users{length}"


def _verdict_words(verdict: Mapping[str, Any] | None) -> str:
    if not verdict:
        return "not judged (a failed run is never compared)"
    base = verdict.get("baseline_run_id")
    if base:
        return (f"verdict {verdict.get('verdict')} against run {base} "
                f"({verdict.get('baseline_rule')} baseline)")
    return f"verdict {verdict.get('verdict')} ({verdict.get('reason')})"


def _cost_words(verdict: Mapping[str, Any] | None) -> str:
    if not verdict or verdict.get("cost_per_1k") is None:
        return "cost not priced"
    if not verdict.get("cost_per_hour") and verdict.get("cost_note"):
        # a zero price is a machine left unpriced: the note's first clause says how to price it
        return f"cost not priced: {verdict['cost_note'].split(';')[0]}"
    return (f"cost {fmt(verdict.get('cost_per_1k'), '{:.4g}')} per 1,000 predictions "
            f"({fmt(verdict.get('cost_per_hour'), '{:.4g}')} per hour)")


def headline(s: Mapping[str, Any], params: Mapping[str, Any],
             verdict: Mapping[str, Any] | None) -> str:
    """What was measured, in one sentence: model, target, load, result, verdict, cost."""
    model = f"{s.get('model_name')}:{s.get('model_version')}"
    target = (f"{s.get('target')} target ({s.get('replicas')} replica(s), "
              f"{s.get('protocol')} protocol)")
    result = (f"{fmt(s.get('throughput_rps'), '{:.2f}')} successful req/s at p95 "
              f"{fmt(s.get('p95_ms'))} ms")
    if s.get("error_rate") is not None:
        result += f" with {s['error_rate']:.1%} errors"
    if s.get("goodput_rps") is not None and s.get("goodput_slo_ms"):
        result += (f", goodput {fmt(s['goodput_rps'], '{:.2f}')} req/s within "
                   f"{fmt(s['goodput_slo_ms'], '{:g}')} ms")
    if s.get("max_sustainable_rps") is not None:
        result += f", {fmt(s['max_sustainable_rps'], '{:.4g}')} req/s sustainable"
    return (f"{model} on the {target} under {_load_words(s, params)}: {result}; "
            f"{_verdict_words(verdict)}; {_cost_words(verdict)}.")


def split_params(params: Mapping[str, Any], provenance: Mapping[str, Any] | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(shaping, other)``: the params that shaped this run (the model under test and the
    run's benchmark fields: its target's settings, its load shape's knobs; see
    ``benchmark.benchmark_fields``) and the rest."""
    names = [*MODEL_PARAMS, *benchmark.benchmark_fields(params, provenance)]
    shaping = {n: params[n] for n in dict.fromkeys(names) if n in params}
    return shaping, {n: v for n, v in params.items() if n not in shaping}


def _params_section(params: Mapping[str, Any], provenance: Mapping[str, Any]) -> str:
    shaping, other = split_params(params, provenance)
    folded = (f"<details><summary>{len(other)} other params (defaults or not used by this "
              f"target and load shape)</summary>{kv_table(other)}</details>" if other else "")
    return f"<h2>Parameters that shaped this run</h2>{kv_table(shaping)}{folded}"


def render_html(summary: Mapping[str, Any], chart_list: list[charts.Chart],
                provenance: Mapping[str, Any], params: Mapping[str, Any], text: str,
                verdict: Mapping[str, Any] | None = None,
                sections: Sequence[charts.Section] = ()) -> str:
    """The whole report as one HTML string (inline CSS, embedded charts, escaped text).
    ``sections``: sections of their own placed after the charts (e.g. autoscaling)."""
    s = summary
    status = str(s.get("status") or "unknown")
    status_class = status if status in ("success", "degraded", "failed") else "failed"
    reason = f" <span class='sub'>{e(s.get('reason'))}</span>" if s.get("reason") else ""
    figures = "\n".join(charts.figure(c) for c in chart_list)
    warnings = [w for w in (generator_warning(s), host_warning(s)) if w]
    warning_html = "".join(f"<p class='warning'>Warning: {e(w)}</p>\n" for w in warnings)
    subtitle = (f"model {s.get('model_name')}:{s.get('model_version')} "
                f"({s.get('model_source')}, weights {s.get('weights')}), "
                f"signature {s.get('signature')}; target {s.get('target')} "
                f"({s.get('protocol')}), {s.get('replicas')} replica(s); "
                f"{s.get('load_shape')} load, {s.get('users')} users, "
                f"{s.get('workers')} worker(s); started {s.get('started_at')}")
    head, scripts = charts.assets([*chart_list, *(c for sec in sections for c in sec.charts)])
    badge = f"<span class='badge {status_class}'>{e(status)}</span>"
    body = f"""<h1>Run {e(s.get('run_id'))} {badge}{reason}</h1>
<p class="headline">{e(headline(s, params, verdict))}</p>
<p class="sub">{e(subtitle)}</p>
{warning_html}<h2>Finding</h2>
<p class="finding">{e(s.get('finding'))}</p>
{_verdict_section(verdict)}
<h2>Key figures</h2>
{_figures_table(s)}
{_peak_table(s)}
{_levels_table(list(s.get('levels') or []))}
<h2>Charts</h2>
<p class="sub">Hover for values; drag across a chart to zoom, double-click to reset; click a
legend entry to hide or show its series.</p>
{figures}
{''.join(section.html for section in sections)}
{_params_section(params, provenance)}
<h2>Provenance</h2>
{kv_table(provenance)}
<h2>Summary (text)</h2>
<pre>{e(text)}</pre>"""
    return document(f"caio-bench run {s.get('run_id')}", body, head, scripts)


def analyse_run(warehouse_uri: str, run_id: str, layout: RunLayout,
                verdict: Mapping[str, Any] | None = None,
                **warehouse_options: Any) -> dict[str, Any]:
    """Summarise ``run_id`` from the warehouse; write the HTML report and summary.json.

    ``verdict``: the run's judged verdict and cost (``verdicts.judge_run``), shown in the
    report and kept in summary.json; None for a run not judged (a failed one).

    ``warehouse_options`` go to ``open_warehouse`` (``gcp_conn_id``, ``impersonation_chain``).
    Returns ``{summary, summary_text, report_uri, summary_uri}`` (small, XCom-safe).
    """
    tables = open_warehouse(warehouse_uri, **warehouse_options).read_run(run_id)
    if tables["runs"].empty:
        raise ValueError(f"run {run_id!r} is not in the warehouse {warehouse_uri}; "
                         "harvest it first")
    summary = summarize(tables["runs"], tables["timeseries"])
    row = tables["runs"].iloc[0]
    provenance, params = _json_field(row["provenance"]), _json_field(row["params"])
    text = summary_text(summary)
    chart_list = run_charts.run_charts(tables["timeseries"], summary)
    autoscaling = autoscaling_section(tables["timeseries"], params)
    page = render_html(summary, chart_list, provenance, params, text, verdict,
                       [autoscaling] if autoscaling else [])
    report_uri = storage.write_text(layout.report_html, page)
    summary_uri = storage.write_text(
        layout.summary_json,
        json.dumps({**summary, "verdict": dict(verdict) if verdict else None,
                    "provenance": provenance, "params": params}, indent=2,
                   sort_keys=True, default=str))
    log.info("run %s analysed:\n%s", run_id, text)
    return {"summary": summary, "summary_text": text, "report_uri": report_uri,
            "summary_uri": summary_uri}
