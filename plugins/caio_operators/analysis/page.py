"""The pieces every HTML report shares: the stylesheet, escaping, number formatting, tables
and the page frame. Every piece of text that reaches a page goes through :func:`e`."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2rem auto; max-width: 64rem; color: #222; line-height: 1.4; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.sub { color: #666; margin-top: 0; }
.headline { font-size: 1.05rem; margin: 0.6rem 0; }
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
figcaption { color: #333; font-size: 0.95rem; font-weight: 600; margin-bottom: 0.3rem; }
.chart-box { width: 100%; min-height: 2rem; }
.chart-empty { color: #777; border: 1px dashed #ccc; padding: 1rem; }
details > summary { cursor: pointer; color: #3f51b5; margin: 0.4rem 0; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
"""


def e(value: Any) -> str:
    """``value`` as HTML-escaped text (None as empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, spec: str = "{:.1f}") -> str:
    """A number for a table: floats through ``spec``, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return spec.format(value)
    return str(value)


def kv_table(items: Mapping[str, Any]) -> str:
    """Key/value rows; non-text values as sorted JSON."""
    if not items:
        return "<p class='sub'>none recorded</p>"
    rows = []
    for key, value in items.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        rows.append(f"<tr><th>{e(key)}</th><td>{e(text)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain table of escaped cells."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def document(title: str, body: str, head: str = "", scripts: str = "") -> str:
    """A whole page: ``head`` (extra styles) in <head>, ``scripts`` at the end of <body>."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{e(title)}</title>\n<style>{CSS}</style>{head}</head>\n<body>\n{body}\n"
            f"{scripts}</body></html>\n")
