"""analyse_run reads the run back from DuckDB and writes a self-contained HTML report."""

from __future__ import annotations

import base64
import io
import json
import re

import pandas as pd
import pytest
from analysis_data import T0, raw_staircase
from PIL import Image

from caio_operators import storage
from caio_operators.analysis import plots
from caio_operators.analysis.report import analyse_run
from caio_operators.layout import RunLayout
from caio_operators.results.consolidate import build_tables
from caio_operators.results.warehouse import open_warehouse

HOSTILE = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
    """A staircase run put straight into the warehouse: no raw files exist in the bucket."""
    root = tmp_path_factory.mktemp("report")
    warehouse = f"duckdb://{root}/wh.duckdb"
    bucket = storage.to_uri(root / "bucket")
    meta = {"run_id": "run-7", "dag_id": "caio_load_test", "target": "local",
            "protocol": "tfserving", "model_name": "mobilenet & co", "model_version": "v1",
            "model_source": "keras.applications.MobileNetV2", "weights": "random",
            "signature": "serving_default", "load_shape": "staircase", "users": 4,
            "workers": 2, "replicas": 2, "status": "success",
            "provenance": {"locust": "2.47.0", "git_sha": "abc123"},
            "params": {"users": 4, "note": HOSTILE}}
    tables = build_tables(meta, *raw_staircase())
    open_warehouse(warehouse).replace_run(tables, "run-7")
    return warehouse, RunLayout(bucket, "run-7"), tables["runs"].iloc[0]


@pytest.fixture(scope="module")
def analysed(stored_run):
    warehouse, layout, _ = stored_run
    assert storage.list_files(layout.run_dir) == []  # only the warehouse has the run
    return analyse_run(warehouse, "run-7", layout)


def test_report_holds_plots_figures_and_escaped_text(stored_run, analysed):
    _, layout, run = stored_run
    result = analysed
    assert result["report_uri"] == layout.report_html
    assert result["summary_uri"] == layout.summary_json
    page = storage.read_text(layout.report_html)

    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    # all but the peak search's (no search here), plus the autoscaling section's: this
    # staircase's load changed
    assert len(images) == len(plots.PLOTS) - 1 + 1
    assert "<h2 id='autoscaling'>Autoscaling</h2>" in page
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    # self-contained: no external fetches at all
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "mobilenet &amp; co" in page

    assert f"{run['p95_ms']:.1f}" in page and f"{run['throughput_rps']:.2f} req/s" in page
    assert "Throughput saturates at about" in page and "with 2 users" in page
    assert "git_sha" in page and "abc123" in page
    assert result["summary"]["saturation"]["users"] == 2
    assert result["summary_text"].startswith("run         run-7  [success]")


def test_summary_json_is_whole_and_matches(stored_run, analysed):
    _, layout, run = stored_run
    result = analysed
    data = json.loads(storage.read_text(layout.summary_json))
    assert data["run_id"] == "run-7" and data["requests"] == int(run["requests"]) == 400
    assert data["p99_ms"] == run["p99_ms"]
    assert data["finding"] == result["summary"]["finding"]
    assert data["provenance"] == {"git_sha": "abc123", "locust": "2.47.0"}
    assert data["params"]["note"] == HOSTILE
    json.dumps(result)  # small and plain: fit for XCom


def test_rerun_overwrites_and_unknown_run_fails(stored_run, analysed):
    warehouse, layout, _ = stored_run
    again = analyse_run(warehouse, "run-7", layout)
    assert again["summary"] == analysed["summary"]
    assert [u.rsplit("/", 1)[1] for u in storage.list_files(layout.report_dir)] == [
        "report.html", "summary.json"]
    with pytest.raises(ValueError, match="not in the warehouse"):
        analyse_run(warehouse, "run-404", layout)


def test_a_saturated_generator_warns_at_the_top_and_plots_worker_cpu(tmp_path):
    warehouse = f"duckdb://{tmp_path}/wh.duckdb"
    layout = RunLayout(storage.to_uri(tmp_path / "bucket"), "run-8")
    # worker 0 calm; worker 1 at >= 90% in 20 of its 24 seconds
    worker_cpu = pd.DataFrame(
        [(T0 + s + 0.1, "0", 35.0) for s in range(24)]
        + [(T0 + s + 0.2, "1", 99.0 if s >= 4 else 60.0) for s in range(24)],
        columns=["ts", "worker", "cpu_percent"])
    tables = build_tables({"run_id": "run-8", "status": "success"}, *raw_staircase(),
                          worker_cpu=worker_cpu)
    open_warehouse(warehouse).replace_run(tables, "run-8")
    out = analyse_run(warehouse, "run-8", layout)
    page = storage.read_text(out["report_uri"])
    assert out["summary"]["status"] == "degraded"
    assert out["summary"]["reason"] == (
        "load generator saturated: worker 1 at 99% CPU in 83% of the run; add workers")
    assert ("<p class='warning'>Warning: Load generator saturated (busiest worker at 99% of "
            "its core)") in page
    assert "Add workers and run again.</p>" in page
    assert page.index("class='warning'") < page.index("<h2>Finding</h2>")
    assert "<th>max CPU (busiest Locust worker)</th><td class='num'>99 % of a core</td>" in page
    assert "WARNING     Load generator saturated" in out["summary_text"]
    cpu_png = plots.cpu_plot(tables["timeseries"])
    without = plots.cpu_plot(tables["timeseries"][
        tables["timeseries"]["metric"] != "worker_cpu_pct"])
    heights = [Image.open(io.BytesIO(png)).size[1] for png in (without, cpu_png)]
    assert heights[1] > heights[0]  # a panel of its own for the workers
    assert base64.b64encode(cpu_png).decode("ascii") in page


def test_a_partial_cloud_monitoring_harvest_is_in_the_report_and_the_summary(tmp_path):
    warehouse = f"duckdb://{tmp_path}/wh.duckdb"
    layout = RunLayout(storage.to_uri(tmp_path / "bucket"), "run-9")
    coverage = ("partial: points to 2023-11-14 22:14:00 UTC of a window ending 2023-11-14 "
                "22:16:00 UTC, after waiting 65 s")
    tables = build_tables({"run_id": "run-9", "status": "degraded", "target": "vertex",
                           "reason": f"Cloud Monitoring's server-side series are {coverage}",
                           "monitoring_coverage": coverage}, *raw_staircase())
    open_warehouse(warehouse).replace_run(tables, "run-9")
    out = analyse_run(warehouse, "run-9", layout)
    page = storage.read_text(out["report_uri"])
    assert out["summary"]["monitoring_coverage"] == coverage
    assert f"<th>Cloud Monitoring series</th><td class='num'>{coverage}</td>" in page
    assert f"monitoring  Cloud Monitoring series {coverage}" in out["summary_text"]
