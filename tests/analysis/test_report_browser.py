"""The reports in a real headless Chromium, opened from files: every chart is drawn, its
series toggle from the legend, and the page logs no error (Debian's ``chromium``). The
reports: a closed-loop run's, an open-loop run's, a peak search's, a sweep's comparison and
the history (``report_pages``)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from caio_testing import REPO
from report_pages import build

_spec = importlib.util.spec_from_file_location("browser", REPO / "tests/scheduler/browser.py")
browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser)

#: per chart: its canvas size, the series it has and shows, the points of the shown ones,
#: and the canvas pixels inked with its series and with them all hidden (then shown again)
CHARTS_JS = """
(async () => {
  const frame = () => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
  const ink = canvas => {
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
    return n;
  };
  const out = [];
  for (const [key, u] of Object.entries(window.caioCharts || {})) {
    const canvas = u.root.querySelector('canvas');
    const shown = u.series.slice(1).filter(s => s.show).length;
    const drawn = Number(u.root.parentElement.dataset.drawn);
    const points = u.series.slice(1).map((s, i) => s.show ?
      u.data[i + 1].filter(v => v !== null && v !== undefined).length : 0);
    const inked = ink(canvas);
    u.series.forEach((s, i) => { if (i) u.setSeries(i, {show: false}); });
    await frame();
    const bare = ink(canvas);
    u.series.forEach((s, i) => { if (i) u.setSeries(i, {show: true}); });
    await frame();
    out.push({key, width: canvas.width, height: canvas.height, series: u.series.length - 1,
              shown, drawn, points, inked, bare,
              box: document.getElementById('chart-' + key) === u.root.parentElement});
  }
  return out;
})()
"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    return build(tmp_path_factory.mktemp("reports"))


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    b = browser.Browser(tmp_path_factory.mktemp("chromium-profile"), width=1200, height=900)
    yield b
    b.close()


def open_page(chromium, path):
    chromium.errors.clear()
    chromium.goto(path.as_uri())
    chromium.wait_js("document.readyState === 'complete' && !!window.caioCharts",
                     what=f"the charts of {path.name}")
    expected = json.loads(chromium.js(
        "document.getElementById('caio-chart-data').textContent"))
    boxes = chromium.js("document.querySelectorAll('.chart-box').length")
    return expected, boxes


# replicas or load change during each of these runs (the rule in docs/autoscaling.md): each
# report has the autoscaling section's charts too
AUTOSCALING = ["autoscaling_replicas", "autoscaling_load", "autoscaling_p99"]


@pytest.mark.parametrize("name, keys", [
    ("report-stair-v2", ["latency", "rates", "users", "latency_vs_throughput", "cpu",
                         "memory", *AUTOSCALING]),
    ("report-open-v2", ["latency", "rates", "users", "latency_vs_throughput", "open_loop",
                        "cpu", "memory", *AUTOSCALING]),
    ("report-peak-v2", ["latency", "rates", "users", "latency_vs_throughput", "open_loop",
                        "peak_latency", "peak_rates", "cpu", "memory", *AUTOSCALING]),
    ("comparison", ["curves", "capacity", "cost"]),
    ("history", ["history_latency", "history_throughput", "history_cost"]),
])
def test_every_chart_is_drawn_without_a_console_error(pages, chromium, name, keys):
    expected, boxes = open_page(chromium, pages[name])
    assert [c["key"] for c in expected] == keys
    drawn = chromium.js(CHARTS_JS)
    assert [c["key"] for c in drawn] == keys and boxes == len(keys)
    for chart, spec in zip(drawn, expected, strict=True):
        assert chart["box"] and chart["width"] > 300 and chart["height"] > 100, chart
        assert chart["series"] == chart["shown"] == chart["drawn"] == len(spec["series"]), chart
        assert all(n > 0 for n in chart["points"]), chart  # every series has points to draw
        assert chart["inked"] > chart["bare"] > 0, chart  # the series put ink on the canvas
    assert chromium.console_errors() == []


def test_a_variant_hides_and_shows_from_the_legend(pages, chromium):
    open_page(chromium, pages["comparison"])
    legend = "document.querySelectorAll('#chart-curves .u-legend .u-series')[1]"
    assert chromium.js(f"{legend}.innerText").startswith("v1")
    chromium.click(legend)
    chromium.wait_js("document.getElementById('chart-curves').dataset.drawn === '1'",
                     what="v1 hidden")
    assert chromium.js("window.caioCharts.curves.series[1].show") is False
    chromium.click(legend)
    chromium.wait_js("document.getElementById('chart-curves').dataset.drawn === '2'",
                     what="v1 shown again")
    assert chromium.console_errors() == []
