"""Summary figures, users levels and the saturation finding on literal numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from analysis_data import staircase, timeseries

from caio_operators.analysis.summary import (
    load_levels,
    saturation,
    summarize,
    summary_text,
)
from caio_operators.results import schema as sc

RUN = {"run_id": "r", "status": "success", "reason": "", "model_name": "mobilenet",
       "model_version": "v1", "model_source": "keras.applications.MobileNetV2",
       "weights": "random", "target": "local", "protocol": "tfserving", "replicas": 2,
       "signature": "serving_default", "load_shape": "staircase", "users": 4, "workers": 2,
       "duration_s": 16.0, "requests": 250, "failures": 2, "error_rate": 0.008,
       "throughput_rps": 16.25, "p50_ms": 12.5, "p90_ms": 30.0, "p95_ms": 40.0,
       "p99_ms": 80.0, "p999_ms": 81.0, "max_ms": 90.0, "mean_ms": 20.0,
       "server_p50_ms": 6.0, "server_p99_ms": 40.0, "peak_cpu_pct": 180.0,
       "peak_memory_mb": 512.0, "started_at": pd.Timestamp("2024-05-01T12:00:00Z")}


def test_levels_drop_transitions_and_the_last_interval():
    ts = staircase([(1, 5, 10.0, 0.0, 20.0), (2, 5, 19.0, 0.0, 25.0),
                    (4, 6, 20.0, 0.5, 80.0)])
    levels = load_levels(ts)
    assert [(lv["users"], lv["intervals"]) for lv in levels] == [(1, 4), (2, 4), (4, 4)]
    assert [lv["throughput_rps"] for lv in levels] == [10.0, 19.0, 19.5]
    assert [lv["p95_ms"] for lv in levels] == [20.0, 25.0, 80.0]
    assert [lv["p50_ms"] for lv in levels] == [10.0, 12.5, 40.0]
    assert levels[2]["error_rate"] == pytest.approx(0.025)


def test_short_levels_are_ignored():
    ts = staircase([(1, 6, 10.0, 0.0, 20.0), (2, 2, 19.0, 0.0, 25.0)])
    assert [lv["users"] for lv in load_levels(ts)] == [1]


def test_saturation_found_where_throughput_flattens_and_p95_rises():
    ts = staircase([(1, 5, 10.0, 0.0, 20.0), (2, 5, 19.0, 0.0, 25.0),
                    (4, 6, 20.0, 0.5, 80.0)])
    sat = saturation(load_levels(ts))
    assert sat["saturated"] is True and sat["users"] == 2
    assert sat["throughput_rps"] == 19.0
    assert sat["finding"] == (
        "Throughput saturates at about 19.0 req/s with 2 users: going to 4 users changed "
        "throughput by +2.6% while p95 latency rose from 25.0 ms to 80.0 ms. Users beyond 2 "
        "only wait in the queue.")


def test_no_saturation_when_throughput_keeps_growing():
    ts = staircase([(1, 5, 10.0, 0.0, 20.0), (2, 5, 19.0, 0.0, 22.0),
                    (4, 6, 36.0, 0.0, 30.0)])
    sat = saturation(load_levels(ts))
    assert sat["saturated"] is False and sat["users"] == 4
    assert sat["finding"].startswith("No saturation up to 4 users")
    assert "36.0 req/s at p95 30.0 ms" in sat["finding"]


def test_flat_throughput_with_flat_latency_is_not_saturation():
    ts = staircase([(1, 5, 10.0, 0.0, 20.0), (2, 5, 10.2, 0.0, 20.0),
                    (3, 5, 10.3, 0.0, 19.0)])
    assert saturation(load_levels(ts))["saturated"] is False


def test_constant_load_cannot_judge_saturation():
    sat = saturation(load_levels(staircase([(8, 10, 50.0, 0.0, 40.0)])))
    assert sat["saturated"] is None and sat["users"] == 8
    assert "Only one load level (8 users: 50.0 req/s at p95 40.0 ms)" in sat["finding"]


def test_no_users_history():
    ts = timeseries([(0, sc.REQUEST_RATE_RPS, 5.0), (1, sc.REQUEST_RATE_RPS, 5.0)])
    assert load_levels(ts) == []
    assert saturation([])["finding"].startswith("Not enough steady intervals")
    assert load_levels(sc.empty_frame("timeseries")) == []


def test_summarize_and_text_table():
    ts = staircase([(1, 5, 10.0, 0.0, 20.0), (2, 5, 19.0, 0.0, 25.0),
                    (4, 6, 20.0, 0.5, 80.0)])
    summary = summarize(pd.DataFrame([RUN]), ts)
    assert summary["p95_ms"] == 40.0 and summary["requests"] == 250
    assert summary["started_at"] == "2024-05-01T12:00:00+00:00"
    assert summary["saturation"]["users"] == 2 and len(summary["levels"]) == 3
    assert summary["has_gpu_metrics"] is False
    text = summary_text(summary)
    lines = text.splitlines()
    assert lines[0] == "run         r  [success]"
    assert "requests    250  failures 2  error rate 0.80%" in lines
    assert "throughput  16.25 req/s (steady window)" in lines
    client = next(line for line in lines if line.startswith("client"))
    assert client.split() == ["client", "12.5", "30.0", "40.0", "80.0", "81.0", "90.0", "20.0"]
    assert not any(line.startswith("goodput") for line in lines)  # RUN has no goodput
    with_slo = summarize(pd.DataFrame([{**RUN, "goodput_rps": 12.5,
                                        "params": '{"slo_ms": 250}'}]), ts)
    assert with_slo["goodput_slo_ms"] == 250.0
    assert "goodput     12.50 req/s within 250 ms (steady window)" in summary_text(
        with_slo).splitlines()
    server = next(line for line in lines if line.startswith("server"))
    assert server.split() == ["server", "6.0", "40.0"]
    assert "      4          4      19.5      40.0      80.0     2.5%" in lines
    assert lines[-1].startswith("finding     Throughput saturates at about 19.0 req/s")


def test_a_saturated_load_generator_is_a_visible_warning():
    row = {**RUN, "status": "degraded", "max_worker_cpu_pct": 97.0, "generator_saturated": True,
           "reason": "load generator saturated: worker w2 at 97% CPU in 75% of the run; "
                     "add workers"}
    summary = summarize(pd.DataFrame([row]), sc.empty_frame("timeseries"))
    assert (summary["max_worker_cpu_pct"], summary["generator_saturated"]) == (97.0, True)
    warning = ("Load generator saturated (busiest worker at 97% of its core): a Locust worker "
               "was at 90% CPU or more in over 10% of the run, so it sent and timed requests "
               "late; these figures describe the load generator, not the model, and are not "
               "trustworthy. Add workers and run again.")
    assert summary["warning"] == warning
    lines = summary_text(summary).splitlines()
    assert "load gen    max worker CPU 97 % of a core (busiest Locust worker)" in lines
    assert f"WARNING     {warning}" in lines
    calm = summarize(pd.DataFrame([{**RUN, "max_worker_cpu_pct": 41.0,
                                    "generator_saturated": False}]), sc.empty_frame("timeseries"))
    assert calm["warning"] is None
    text = summary_text(calm)
    assert "max worker CPU 41 % of a core" in text and "WARNING" not in text
    # runs without worker samples (older rows) read as unknown, not as a warning
    assert "max worker CPU - % of a core" in summary_text(
        summarize(pd.DataFrame([RUN]), sc.empty_frame("timeseries")))


def test_a_peak_search_is_the_finding_with_its_steps():
    import json

    from caio_testing import PEAK_SEARCH_REPORT

    from caio_operators.results.peak import steps_summary

    row = {**RUN, "load_shape": "peak_search", "max_sustainable_rps": 60.0, "slo_ms": 100.0,
           "slo_percentile": 99.0,
           "peak_search": json.dumps(steps_summary(PEAK_SEARCH_REPORT))}
    summary = summarize(pd.DataFrame([row]), sc.empty_frame("timeseries"))
    assert summary["finding"] == ("Sustains 60 req/s with p99 under 100 ms; 80 req/s fails "
                                  "(converged: 60/s passes, 80/s fails).")
    lines = summary_text(summary).splitlines()
    assert "peak search max sustainable 60 req/s  (p99 SLO 100 ms)" in lines
    assert ("    1        80     FAIL        70     900.0     5.0%        3  error rate 5.00% > "
            "1.00% in 3 consecutive windows") in lines
    cut = {**row, "peak_search": json.dumps({**steps_summary(PEAK_SEARCH_REPORT),
                                             "status": "budget", "reason": "out of time"})}
    assert summarize(pd.DataFrame([cut]), sc.empty_frame("timeseries"))["finding"] == (
        "Peak search cut short (out of time): 60 req/s is the highest rate shown to keep p99 "
        "under 100 ms; 80 req/s fails; give it a longer duration_s.")


def test_failed_run_summary_has_gaps_not_errors():
    row = {**RUN, "status": "failed", "reason": "locust exited 1", "requests": 0,
           "failures": 0, "error_rate": math.nan, "p50_ms": math.nan, "p95_ms": None,
           "throughput_rps": math.nan}
    summary = summarize(pd.DataFrame([row]), sc.empty_frame("timeseries"))
    assert summary["p50_ms"] is None and summary["error_rate"] is None
    text = summary_text(summary)
    assert text.splitlines()[0] == "run         r  [failed] - locust exited 1"
    assert "throughput  - req/s (steady window)" in text


def test_no_runs_row_is_an_error():
    with pytest.raises(ValueError, match="harvest it first"):
        summarize(sc.empty_frame("runs"), sc.empty_frame("timeseries"))


def test_latest_run_summary_from_the_warehouse(tmp_path):
    from analysis_data import raw_staircase

    from caio_operators.analysis.summary import latest_run_summary
    from caio_operators.results.consolidate import build_tables
    from caio_operators.results.warehouse import open_warehouse

    uri = f"duckdb://{tmp_path}/wh.duckdb"
    with pytest.raises(LookupError, match="does not exist"):
        latest_run_summary(uri)
    wh = open_warehouse(uri)
    wh.ensure_schema()
    with pytest.raises(LookupError, match="no runs yet"):
        latest_run_summary(uri)
    raw = raw_staircase()
    for run_id, started in (("old", 1000.0), ("new", 2000.0)):
        meta = {"run_id": run_id, "started_at": started, "ended_at": started + 24,
                "params": {"bucket": "file:///data/bucket"}}
        wh.replace_run(build_tables(meta, *raw), run_id)
    text = latest_run_summary(uri)
    assert text.startswith("run         new  [success]")
    assert text.splitlines()[-1] == "report      file:///data/bucket/runs/new/report/report.html"
    assert latest_run_summary(uri, run_id="old").startswith("run         old")
    with pytest.raises(LookupError, match="'gone' is not in the warehouse"):
        latest_run_summary(uri, run_id="gone")
