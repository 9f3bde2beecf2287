"""Analyse a run from the warehouse into a self-contained HTML report and ``summary.json``.

The report reads the run back from the warehouse, never from raw files or XCom, so it
looks the same whichever backend produced the rows. The HTML has no external assets:
CSS is inline, plots are base64 PNG data URIs, and every piece of text is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Mapping
from typing import Any

from caio_operators import storage
from caio_operators.analysis import plots
from caio_operators.analysis.autoscaling_report import section_for_run as autoscaling_section
from caio_operators.analysis.summary import (
    generator_warning,
    host_warning,
    summarize,
    summary_text,
)
from caio_operators.layout import RunLayout
from caio_operators.results.warehouse import open_warehouse

log = logging.getLogger(__name__)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2rem auto; max-width: 60rem; color: #222; line-height: 1.4; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.sub { color: #666; margin-top: 0; }
.badge { display: inline-block; padding: 0.1rem 0.6rem; border-radius: 0.8rem; color: #fff;
         font-size: 0.9rem; vertical-align: middle; }
.success { background: #2e7d32; } .degraded { background: #ef6c00; }
.failed { background: #c62828; }
.finding { background: #f4f6fb; border-left: 4px solid #3f51b5; padding: 0.6rem 1rem; }
.warning { background: #fff3e0; border-left: 4px solid #ef6c00; padding: 0.6rem 1rem;
           font-weight: 600; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #fafafa; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any, spec: str = "{:.1f}") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return spec.format(value)
    return str(value)


def _kv_table(items: Mapping[str, Any]) -> str:
    if not items:
        return "<p class='sub'>none recorded</p>"
    rows = []
    for key, value in items.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        rows.append(f"<tr><th>{_e(key)}</th><td>{_e(text)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


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
        ("requests", _fmt(s.get("requests"))), ("failures", _fmt(s.get("failures"))),
        ("error rate", err),
        ("throughput (steady window)", f"{_fmt(s.get('throughput_rps'), '{:.2f}')} req/s"),
        ("duration", f"{_fmt(s.get('duration_s'))} s"),
        ("peak CPU (busiest replica)", f"{_fmt(s.get('peak_cpu_pct'), '{:.0f}')} % of a core"),
        ("peak memory", f"{_fmt(s.get('peak_memory_mb'), '{:.0f}')} MB"),
        ("max CPU (busiest Locust worker)",
         f"{_fmt(s.get('max_worker_cpu_pct'), '{:.0f}')} % of a core"),
        ("machine CPU during the load (all / other processes)",
         f"{_fmt(s.get('host_cpu_pct'), '{:.0f}')} / "
         f"{_fmt(s.get('host_other_cpu_pct'), '{:.0f}')} % of a core"),
        ("other caio loads on this machine meanwhile", s.get("overlapping_runs") or "none"),
    ]
    if s.get("monitoring_coverage"):
        rows.append(("Cloud Monitoring series", s["monitoring_coverage"]))
    body = "".join(f"<tr><th>{_e(k)}</th><td class='num'>{_e(v)}</td></tr>" for k, v in rows)
    lat_keys = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")
    heads = "".join(f"<th>{_e(k.removesuffix('_ms').replace('p999', 'p99.9'))}</th>"
                    for k in lat_keys)
    client = "".join(f"<td class='num'>{_e(_fmt(s.get(k)))}</td>" for k in lat_keys)
    server = "".join(
        f"<td class='num'>{_e(_fmt(s.get('server_' + k)) if k in ('p50_ms', 'p99_ms') else '')}"
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
        "<tr>" + "".join(f"<td class='num'>{_e(v)}</td>" for v in (
            lv["users"], lv["intervals"], _fmt(lv["throughput_rps"]), _fmt(lv["p50_ms"]),
            _fmt(lv["p95_ms"]),
            "-" if lv.get("error_rate") is None else f"{lv['error_rate']:.1%}")) + "</tr>"
        for lv in levels)
    return f"<h3>Per users level</h3><table>{head}{rows}</table>"


def _peak_table(s: Mapping[str, Any]) -> str:
    search = s.get("peak")
    if not search:
        return ""
    head = ("<tr><th>step</th><th>offered req/s</th><th>verdict</th><th>req/s</th>"
            f"<th>p{_e(_fmt(s.get('slo_percentile'), '{:g}'))} ms</th><th>errors</th>"
            "<th>windows</th><th>reason</th></tr>")
    rows = "".join(
        "<tr>" + "".join(f"<td class='num'>{_e(v)}</td>" for v in (
            st["step"], _fmt(st["rate"]), "pass" if st["passed"] else "FAIL",
            _fmt(st["throughput_rps"]), _fmt(st.get("latency_ms")),
            "-" if st.get("error_rate") is None else f"{st['error_rate']:.1%}",
            st["windows"])) + f"<td>{_e(st['reason'])}</td></tr>"
        for st in search["steps"])
    return (f"<h3>Peak search: {_e(_fmt(s.get('max_sustainable_rps'), '{:.4g}'))} req/s "
            f"sustained ({_e(search.get('status'))})</h3><table>{head}{rows}</table>")


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
            ("cost per hour", _fmt(verdict.get("cost_per_hour"), "{:.4g}")),
            ("cost per 1,000 predictions", _fmt(verdict.get("cost_per_1k"), "{:.4g}")),
            ("cost basis", f"{verdict.get('cost_basis') or '-'} "
                           f"({_fmt(verdict.get('cost_basis_rps'), '{:.4g}')} req/s)"),
            ("cost note", verdict.get("cost_note"))]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<h2>Verdict</h2><table>{body}</table>"


def render_html(summary: Mapping[str, Any], images: Mapping[str, bytes],
                provenance: Mapping[str, Any], params: Mapping[str, Any], text: str,
                verdict: Mapping[str, Any] | None = None, sections: str = "") -> str:
    """The whole report as one HTML string (inline CSS, inline PNGs, escaped text).
    ``sections``: HTML fragments placed after the plots (e.g. autoscaling)."""
    s = summary
    status = str(s.get("status") or "unknown")
    status_class = status if status in ("success", "degraded", "failed") else "failed"
    reason = f" <span class='sub'>{_e(s.get('reason'))}</span>" if s.get("reason") else ""
    titles = {key: title for key, title, _ in plots.PLOTS}
    figures = "".join(
        f"<figure><img alt='{_e(titles.get(key, key))}' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"
        f"<figcaption>{_e(titles.get(key, key))}</figcaption></figure>"
        for key, png in images.items())
    warnings = [w for w in (generator_warning(s), host_warning(s)) if w]
    warning_html = "".join(f"<p class='warning'>Warning: {_e(w)}</p>\n" for w in warnings)
    subtitle = (f"model {s.get('model_name')}:{s.get('model_version')} "
                f"({s.get('model_source')}, weights {s.get('weights')}), "
                f"signature {s.get('signature')}; target {s.get('target')} "
                f"({s.get('protocol')}), {s.get('replicas')} replica(s); "
                f"{s.get('load_shape')} load, {s.get('users')} users, "
                f"{s.get('workers')} worker(s); started {s.get('started_at')}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>caio-bench run {_e(s.get('run_id'))}</title>
<style>{_CSS}</style></head>
<body>
<h1>Run {_e(s.get('run_id'))} <span class="badge {status_class}">{_e(status)}</span>{reason}</h1>
<p class="sub">{_e(subtitle)}</p>
{warning_html}<h2>Finding</h2>
<p class="finding">{_e(s.get('finding'))}</p>
{_verdict_section(verdict)}
<h2>Key figures</h2>
{_figures_table(s)}
{_peak_table(s)}
{_levels_table(list(s.get('levels') or []))}
<h2>Plots</h2>
{figures}
{sections}
<h2>Provenance</h2>
{_kv_table(provenance)}
<h2>Parameters</h2>
{_kv_table(params)}
<h2>Summary (text)</h2>
<pre>{_e(text)}</pre>
</body></html>
"""


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
    text = summary_text(summary)
    row = tables["runs"].iloc[0]
    provenance, params = _json_field(row["provenance"]), _json_field(row["params"])
    images = plots.all_plots(tables["timeseries"])
    sections = autoscaling_section(tables["timeseries"], params)
    page = render_html(summary, images, provenance, params, text, verdict, sections)
    report_uri = storage.write_text(layout.report_html, page)
    summary_uri = storage.write_text(
        layout.summary_json,
        json.dumps({**summary, "verdict": dict(verdict) if verdict else None,
                    "provenance": provenance, "params": params}, indent=2,
                   sort_keys=True, default=str))
    log.info("run %s analysed:\n%s", run_id, text)
    return {"summary": summary, "summary_text": text, "report_uri": report_uri,
            "summary_uri": summary_uri}
