"""Interactive charts for the HTML reports: a chart is a plain :class:`Chart` spec (title,
axes, series of x/y points), and a page embeds its charts' data as JSON plus, once, the
uPlot library and a small script that draws them (hover values, drag to zoom, double-click
to reset, click a legend entry to hide or show its series). No CDN: the page works offline.

To add a chart to a report, write one function that returns a :class:`Chart` (or None when
it does not apply) and list it in that report's charts (``run_charts.RUN_CHARTS``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from caio_operators.analysis.page import e
from caio_operators.resources import find

#: how a series is drawn
KINDS = ("line", "points", "step", "bars")


@dataclass(frozen=True)
class Series:
    """One toggleable series: points (x, y); y None (or NaN) is a gap."""

    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    kind: str = "line"
    color: str | None = None
    dash: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"series kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.label!r}: {len(self.x)} x but {len(self.y)} y")


@dataclass(frozen=True)
class Chart:
    """One chart. ``x_time``: x is epoch seconds, shown as dates; ``x_names``: x is an index
    into these names (bar charts); ``empty``: what the page says when no series has data."""

    key: str
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...] = ()
    x_time: bool = False
    x_names: tuple[str, ...] = ()
    y_log: bool = False
    y_min: float | None = None
    y_max: float | None = None
    empty: str = "no data"
    caption: str = ""
    height: int = 300

    @property
    def drawn(self) -> bool:
        """Whether any series has a point to draw."""
        return any(_num(y) is not None for s in self.series for y in s.y)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _round(value: float | None, digits: int = 6) -> float | None:
    # 6 significant digits: well below what a chart can show, and a small page
    return None if value is None else float(f"{value:.{digits}g}")


def aligned(series: Sequence[Series], log: bool = False, x_digits: int = 6
            ) -> list[list[float | None]]:
    """uPlot's data: one sorted x column and one y column per series, None where a series
    has no point at that x. Points of different series at the same x share a row; a
    series's repeated x (a scatter) gets rows of its own, nudged to keep x strictly
    increasing. ``log``: non-positive y dropped."""
    points: list[tuple[float, int, float | None]] = []
    for index, s in enumerate(series):
        for raw_x, raw_y in zip(s.x, s.y, strict=True):
            x, y = _num(raw_x), _num(raw_y)
            if x is None or y is None or (log and y <= 0):
                continue
            points.append((cast(float, _round(x, x_digits)), index, _round(y)))  # x is set
    points.sort(key=lambda p: (p[0], p[1]))
    xs: list[float] = []
    columns: list[list[float | None]] = [[] for _ in series]
    for x, index, y in points:
        if not xs or xs[-1] < x or columns[index][-1] is not None:
            # uPlot needs strictly increasing x (it bisects x to find what is in view): a
            # repeated x moves by a billionth, far below what the chart or its legend shows
            xs.append(x if not xs or xs[-1] < x else xs[-1] + max(abs(x), 1.0) * 1e-9)
            for column in columns:
                column.append(None)
        columns[index][-1] = y
    x_column: list[float | None] = list(xs)
    return [x_column, *columns]


def spec_json(chart: Chart) -> dict[str, Any]:
    """The chart as the page's script reads it."""
    return {
        "key": chart.key, "title": chart.title, "x_label": chart.x_label,
        "y_label": chart.y_label, "x_time": chart.x_time, "x_names": list(chart.x_names),
        "y_log": chart.y_log, "y_min": chart.y_min, "y_max": chart.y_max,
        "height": chart.height,
        "series": [{"label": s.label, "kind": s.kind, "color": s.color, "dash": s.dash}
                   for s in chart.series],
        # epoch seconds need 10 digits before the point to stay on their second
        "data": aligned(chart.series, chart.y_log, 13 if chart.x_time else 6),
    }


def figure(chart: Chart) -> str:
    """The chart's place in the page: its title, then a box the script draws into (or the
    note saying why there is nothing to draw)."""
    caption = f"<figcaption>{e(chart.title)}" + (
        f": {e(chart.caption)}" if chart.caption else "") + "</figcaption>"
    if not chart.drawn:
        return (f"<figure class='chart' data-chart='{e(chart.key)}'>{caption}"
                f"<p class='chart-empty'>{e(chart.empty)}</p></figure>")
    return (f"<figure class='chart' data-chart='{e(chart.key)}'>{caption}"
            f"<div class='chart-box' id='chart-{e(chart.key)}'></div></figure>")


@dataclass(frozen=True)
class Section:
    """A report section of its own (e.g. autoscaling): its HTML, which places its charts
    with :func:`figure`, and those charts (the page embeds their data with the others)."""

    html: str
    charts: tuple[Chart, ...] = ()


@cache
def _asset(name: str) -> str:
    path = find("report", name)
    if not path.is_file():
        raise FileNotFoundError(f"report asset {path} is missing: reinstall caio-operators "
                                "(its wheel carries resources/report/)")
    return path.read_text(encoding="utf-8")


def _script_json(value: Any) -> str:
    # inside <script>, "</" would end the element: JSON may spell "<" as \u003c
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def assets(charts: Iterable[Chart]) -> tuple[str, str]:
    """``(head, scripts)`` for a page: uPlot's stylesheet, and the library, the charts'
    data and the drawing script, each once. Charts with nothing to draw are left out."""
    specs = [spec_json(c) for c in charts if c.drawn]
    head = f"<style>{_asset('uPlot.min.css')}</style>"
    scripts = (f"<script>{_asset('uPlot.iife.min.js')}</script>\n"
               f"<script type='application/json' id='caio-chart-data'>{_script_json(specs)}"
               f"</script>\n<script>{_asset('charts.js')}</script>\n")
    return head, scripts
