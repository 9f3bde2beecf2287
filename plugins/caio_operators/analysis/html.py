"""The HTML of every report: styles, escaping, number formats, tables and the page itself.

A page is one self-contained file: CSS inline, the charting library (uPlot, vendored under
``caio_operators/resources/uplot``) and the small script that draws the charts embedded
once, and each chart's data as JSON in one ``<script type="application/json">`` block. No
CDN, no external fetch: the file works offline. Every piece of text is escaped.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from caio_operators.resources import PACKAGED

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2rem auto; max-width: 64rem; color: #222; line-height: 1.4; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.sub { color: #666; margin-top: 0; }
.lead { font-size: 1.05rem; }
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
details summary { cursor: pointer; color: #3f51b5; margin: 0.5rem 0; }
.chart { margin: 1rem 0 1.5rem; min-height: 120px; }
.nochart { color: #666; font-style: italic; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
"""

#: id of the JSON block holding every chart spec of a page (read by charts.js)
CHARTS_ID = "caio-charts"


def e(value: Any) -> str:
    """``value`` as escaped HTML text (None as empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, spec: str = "{:.1f}") -> str:
    """A figure for a table: ``-`` when unknown (None or NaN), floats through ``spec``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return spec.format(value)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def kv_table(items: Mapping[str, Any]) -> str:
    """``key | value`` rows; non-string values as JSON."""
    if not items:
        return "<p class='sub'>none recorded</p>"
    rows = []
    for key, value in items.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        rows.append(f"<tr><th>{e(key)}</th><td>{e(text)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def chart_div(spec: Mapping[str, Any] | None, empty: str = "") -> str:
    """The placeholder ``charts.js`` draws ``spec`` into; a short note when there is no
    chart (``spec`` None: no data for it)."""
    if spec is None:
        return f"<p class='nochart'>{e(empty)}</p>" if empty else ""
    return f"<div class='chart' id='{e(spec['id'])}'></div>"


@cache
def _assets() -> tuple[str, str, str]:
    uplot = PACKAGED / "uplot"
    return ((uplot / "uPlot.min.css").read_text(encoding="utf-8"),
            (uplot / "uPlot.iife.min.js").read_text(encoding="utf-8"),
            (PACKAGED / "report" / "charts.js").read_text(encoding="utf-8"))


def _json_for_script(value: Any) -> str:
    # inside <script>, "</" would end the block and "<!--" open a comment: escape "<"
    return json.dumps(value, allow_nan=False, default=str).replace("<", "\\u003c")


def page(title: str, body: str, charts: Sequence[Mapping[str, Any]] = ()) -> str:
    """A whole self-contained page: ``body`` (HTML) with ``charts`` (chart specs, each
    placed by a :func:`chart_div` in ``body``) drawn by the embedded uPlot."""
    css, uplot, script = _assets()
    scripts = ""
    if charts:
        scripts = (f"<script type='application/json' id='{CHARTS_ID}'>"
                   f"{_json_for_script(list(charts))}</script>\n"
                   f"<script>{uplot}</script>\n<script>{script}</script>\n")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>{CSS}{css if charts else ""}</style></head>
<body>
{body}
{scripts}</body></html>
"""
