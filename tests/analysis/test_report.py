"""analyse_run reads the run back from DuckDB and writes a self-contained HTML report."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from analysis_data import T0, raw_staircase
from caio_testing import chart_data

from caio_operators import storage
from caio_operators.analysis.report import analyse_run, headline, split_params
from caio_operators.layout import RunLayout
from caio_operators.results.consolidate import build_tables
from caio_operators.results.warehouse import open_warehouse

HOSTILE = "<script>alert('x')</script>"


def chart_keys(page: str) -> list[str]:
    return [c["key"] for c in chart_data(page)]


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

    # every chart that applies to a closed-loop run without a peak search, drawn from data,
    # then the autoscaling section's: this staircase's load changed
    assert chart_keys(page) == ["latency", "rates", "users", "latency_vs_throughput", "cpu",
                                "memory", "autoscaling_replicas", "autoscaling_load",
                                "autoscaling_p99"]
    assert page.count("class='chart-box'") == 9
    assert "<h2 id='autoscaling'>Autoscaling</h2>" in page
    # self-contained: no external fetches at all; the library embedded once
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page)
    assert "<link" not in page and not re.search(r"<script[^>]*\ssrc=", page)
    assert page.count("var uPlot=") == 1
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
    workers = {c["key"]: c for c in chart_data(page)}["worker_cpu"]  # a chart of its own
    assert [s["label"] for s in workers["series"]] == ["worker-0", "worker-1",
                                                       "saturated (90%)"]
    worker_1 = workers["data"][2]
    assert sorted(v for v in worker_1 if v is not None)[-20:] == [99.0] * 20


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


def test_the_headline_says_what_was_measured_in_one_sentence():
    summary = {"model_name": "resnet101", "model_version": "v2", "target": "local",
               "replicas": 2, "protocol": "tfserving", "load_shape": "staircase", "users": 8,
               "throughput_rps": 12.345, "p95_ms": 310.04, "error_rate": 0.0125,
               "goodput_rps": 11.5, "goodput_slo_ms": 500.0}
    verdict = {"verdict": "regression", "baseline_run_id": "run-1", "baseline_rule": "previous",
               "cost_per_1k": 0.01234, "cost_per_hour": 0.5}
    assert headline(summary, {"duration_s": 80}, verdict) == (
        "resnet101:v2 on the local target (2 replica(s), tfserving protocol) under a staircase "
        "load of up to 8 users for 80 s: 12.35 successful req/s at p95 310.0 ms with 1.2% "
        "errors, goodput 11.50 req/s within 500 ms; verdict regression against run run-1 "
        "(previous baseline); cost 0.01234 per 1,000 predictions (0.5 per hour).")
    peak = {**summary, "load_shape": "peak_search", "slo_ms": 200.0, "slo_percentile": 99.0,
            "max_sustainable_rps": 42.0, "goodput_rps": None}
    unpriced = {"verdict": "no baseline", "baseline_run_id": None, "reason": "no earlier "
                "successful run of resnet101:v2 before this one", "cost_per_1k": 0.0,
                "cost_per_hour": 0.0, "cost_note": "local target: cost 0 (set "
                "local_machine_type to price this machine); at the measured throughput"}
    assert headline(summary, {}, unpriced).endswith(
        "users: 12.35 successful req/s at p95 310.0 ms with 1.2% errors, goodput 11.50 req/s "
        "within 500 ms; verdict no baseline (no earlier successful run of resnet101:v2 before "
        "this one); cost not priced: local target: cost 0 (set local_machine_type to price "
        "this machine).")
    assert headline(peak, {"max_rate": 100}, None) == (
        "resnet101:v2 on the local target (2 replica(s), tfserving protocol) under a peak "
        "search up to 100 req/s for the highest rate with p99 under 200 ms: 12.35 successful "
        "req/s at p95 310.0 ms with 1.2% errors, 42 req/s sustainable; not judged (a failed "
        "run is never compared); cost not priced.")


def test_only_the_params_that_shaped_the_run_are_shown():
    params = {"model_name": "m", "model_version": "v1", "model_source": "builtin:tiny",
              "endpoint_url": "", "target": "local", "replicas": 2, "server_threads": 0,
              "server_batch_max": 0, "server_batch_timeout_ms": 2.0, "signature": "s",
              "load_shape": "open_rate", "rate": 50.0, "rate_profile": "spike",
              "spike_rate": 200.0, "spike_start_s": 10, "spike_duration_s": 5,
              "step_rate": 10.0, "arrivals": "poisson", "max_in_flight": 64, "users": 8,
              "step_users": 2, "project": "p", "machine_type": "n1-standard-4"}
    shaping, other = split_params(params)
    assert list(shaping) == [
        "model_name", "model_version", "model_source", "endpoint_url", "target", "signature",
        "load_shape", "replicas", "server_threads", "server_batch_max", "rate",
        "rate_profile", "arrivals", "max_in_flight", "spike_rate", "spike_start_s",
        "spike_duration_s"]
    # a closed-loop knob, a staircase-profile knob, batching off, and cloud settings
    assert set(other) == {"server_batch_timeout_ms", "step_rate", "users", "step_users",
                          "project", "machine_type"}
