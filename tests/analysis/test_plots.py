"""Every plot renders real PNGs, with data and without."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pandas as pd
import pytest
from analysis_data import raw_staircase, timeseries
from PIL import Image

from caio_operators.analysis import plots
from caio_operators.results import schema as sc
from caio_operators.results.consolidate import build_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_timeseries():
    client, server, samples, history = raw_staircase()
    return build_tables({"run_id": "p"}, client, server, samples, history)["timeseries"]


def size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
        return image.size


def test_all_plots_from_a_run(run_timeseries):
    images = plots.all_plots(run_timeseries)
    # a run without a peak search gets every plot but that one
    assert list(images) == [key for key, _, _ in plots.PLOTS if key != "peak_search"]
    for png in images.values():
        width, height = size(png)
        assert width == 800 and 200 <= height <= 800


def test_peak_search_plot_for_a_run_that_searched(run_timeseries):
    from caio_testing import PEAK_SEARCH_REPORT

    from caio_operators.results.peak import peak_series

    searched = pd.concat([run_timeseries, peak_series("r1", PEAK_SEARCH_REPORT)],
                         ignore_index=True)
    images = plots.all_plots(searched)
    assert list(images) == [key for key, _, _ in plots.PLOTS]
    assert size(images["peak_search"]) == (1100, 400)


def test_plots_without_data_still_render():
    empty = sc.empty_frame("timeseries")
    for png in plots.all_plots(empty).values():
        size(png)


def test_cpu_plot_grows_a_gpu_panel_only_with_gpu_metrics():
    cpu = [(s, sc.CPU_UTILIZATION_PCT, 50.0) for s in range(3)]
    without = size(plots.cpu_plot(timeseries(cpu)))
    with_gpu = size(plots.cpu_plot(timeseries(cpu + [(s, sc.GPU_UTILIZATION_PCT, 30.0)
                                                      for s in range(3)])))
    assert with_gpu[1] > without[1]


def test_matplotlib_is_imported_lazily(repo):
    code = ("import sys; import caio_operators.analysis.report, caio_operators.analysis.plots; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(repo / "plugins")}, check=True)
    assert out.stdout.strip() == "False"
