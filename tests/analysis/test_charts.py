"""Chart specs become uPlot's aligned columns; a page embeds the library once."""

from __future__ import annotations

import math

import pytest

from caio_operators.analysis import charts
from caio_operators.analysis.charts import Chart, Series


def test_series_at_the_same_x_share_rows_and_a_scatter_keeps_every_point():
    line = Series("line", [0.0, 1.0, 2.0], [10.0, math.nan, 30.0])
    dots = Series("dots", [1.0, 1.0, 2.0], [5.0, 6.0, 7.0], kind="points")
    xs, a, b = charts.aligned([line, dots])
    assert xs[:2] == [0.0, 1.0] and xs[3] == 2.0
    assert xs[1] < xs[2] < xs[3] and xs[2] == pytest.approx(1.0, abs=1e-8)  # strictly rising
    assert a == [10.0, None, None, 30.0]
    assert b == [None, 5.0, 6.0, 7.0]


def test_a_log_axis_drops_what_it_cannot_show():
    xs, ys = charts.aligned([Series("s", [0, 1, 2], [0.0, -1.0, 4.0])], log=True)
    assert (xs, ys) == ([2.0], [4.0])


def test_bad_series_are_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        Series("s", [1], [1], kind="pie")
    with pytest.raises(ValueError, match="2 x but 1 y"):
        Series("s", [1, 2], [1])


def test_a_page_embeds_the_library_once_and_only_charts_with_data():
    full = Chart("a", "A", "x", "y", (Series("s", [1, 2], [3, 4]),))
    empty = Chart("b", "B", "x", "y", (Series("s", [1], [math.nan]),), empty="nothing here")
    head, scripts = charts.assets([full, empty, full])
    assert scripts.count("var uPlot=") == 1 and ".uplot" in head
    assert scripts.count('"key":"a"') == 2 and '"key":"b"' not in scripts
    assert "nothing here" in charts.figure(empty) and "chart-box" not in charts.figure(empty)
    assert "id='chart-a'" in charts.figure(full)


def test_text_in_chart_data_cannot_end_the_script():
    hostile = Chart("h", "H", "x", "y", (Series("</script><b>", [1], [1]),))
    _, scripts = charts.assets([hostile])
    assert "</script><b>" not in scripts and "\\u003c/script>\\u003cb>" in scripts
