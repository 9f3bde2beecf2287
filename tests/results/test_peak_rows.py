"""A peak search's report becomes runs columns and timeseries rows (literal figures), and a
harvest of a run directory holding one stores them."""

from __future__ import annotations

import json

import pandas as pd
from caio_testing import PEAK_SEARCH_REPORT

from caio_operators import storage
from caio_operators.results import peak
from caio_operators.results import schema as sc
from caio_operators.results.harvest import harvest_run


def test_peak_series_rows_per_window_and_step():
    series = peak.peak_series("r1", PEAK_SEARCH_REPORT)
    assert list(series.columns) == sc.columns("timeseries")
    offered = series[series["metric"] == sc.PEAK_OFFERED_RPS]
    assert offered.groupby("dimension")["value"].first().to_dict() == {
        "step-0": 40.0, "step-1": 80.0, "step-2": 60.0}
    assert len(offered) == 9  # three windows a step
    errors = series[(series["metric"] == sc.PEAK_ERROR_RATE)
                    & (series["dimension"] == "step-1")]["value"]
    assert errors.tolist() == [0.05, 0.05, 0.05]  # 8 of 160 requests
    verdicts = series[series["metric"] == sc.PEAK_STEP_PASSED]
    assert verdicts.set_index("dimension")["value"].to_dict() == {
        "step-0": 1.0, "step-1": 0.0, "step-2": 1.0}
    # a verdict sits at its step's first judged window
    first = series[(series["metric"] == sc.PEAK_OFFERED_RPS)
                   & (series["dimension"] == "step-2")]["ts"].min()
    assert verdicts[verdicts["dimension"] == "step-2"]["ts"].iloc[0] == first
    assert first == pd.Timestamp(1_700_000_018, unit="s", tz="UTC")


def test_harvest_stores_the_search(small_run, meta, tmp_path):
    storage.write_text(peak.search_uri(small_run), json.dumps(PEAK_SEARCH_REPORT))
    result = harvest_run(small_run, meta, f"duckdb://{tmp_path}/wh.duckdb")
    assert result["figures"]["max_sustainable_rps"] == 60.0
    runs = pd.read_parquet(storage.local_path(small_run.table_uri("runs")))
    row = runs.iloc[0]
    assert (row["slo_ms"], row["slo_percentile"]) == (100.0, 99.0)
    steps = json.loads(row["peak_search"])
    assert steps["status"] == "converged"
    assert [(s["rate"], s["passed"]) for s in steps["steps"]] == [
        (40.0, True), (80.0, False), (60.0, True)]
    assert row["status"] == "success"


def test_an_unconverged_search_degrades_the_run(small_run, meta, tmp_path):
    cut = {**PEAK_SEARCH_REPORT, "status": "budget",
           "reason": "duration_s ran out before the search converged; highest rate that "
                     "passed so far: 60 req/s"}
    storage.write_text(peak.search_uri(small_run), json.dumps(cut))
    result = harvest_run(small_run, meta, f"duckdb://{tmp_path}/wh.duckdb")
    assert result["figures"]["status"] == "degraded"
    assert "the peak search did not converge: duration_s ran out" in result["figures"]["reason"]


def test_an_unreadable_search_file_is_skipped_not_fatal(small_run, meta, tmp_path):
    storage.write_text(peak.search_uri(small_run), "{not json")
    result = harvest_run(small_run, meta, f"duckdb://{tmp_path}/wh.duckdb")
    assert peak.search_uri(small_run) in result["skipped_files"]
    assert result["figures"]["max_sustainable_rps"] is None
