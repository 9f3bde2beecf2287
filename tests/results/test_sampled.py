"""Runs whose raw records are a sample (record_sample < 1): counts and rates come from the
workers' histogram counts (literal figures), and harvest uses them for such runs only."""

from __future__ import annotations

import json
import math

import pandas as pd

from caio_operators import storage
from caio_operators.results import hdr
from caio_operators.results import schema as sc
from caio_operators.results.harvest import harvest_run
from caio_operators.results.sampled import interval_counts, throughput_rps


def rec(ts: float, worker: str, ok: int, failed: int, signature: str = "serving_default"):
    hist = hdr.new_histogram()
    hdr.record_many_ms(hist, [10.0] * ok)
    return hdr.parse_line(hdr.record_line(ts=ts, interval_s=1.0, worker=worker,
                                          signature=signature, ok=ok, failed=failed, hist=hist))


def test_interval_counts_sum_workers_and_fill_gaps():
    records = [rec(100.0, "a", 5, 1), rec(100.0, "b", 4, 0), rec(102.0, "a", 7, 2)]
    counts = interval_counts(records, 1.0)
    assert counts.to_dict("list") == {"ts": [100.0, 101.0, 102.0], "ok": [9, 0, 7],
                                      "failed": [1, 0, 2]}
    assert interval_counts(records, 2.0).to_dict("list") == {
        "ts": [100.0, 102.0], "ok": [9, 7], "failed": [1, 2]}


def test_throughput_over_the_steady_window_of_whole_intervals():
    # 10 intervals of 1 s, 10% trimmed from each end: intervals 101..108 count
    counts = pd.DataFrame({"ts": [100.0 + i for i in range(10)], "ok": [1] + [20] * 8 + [1],
                           "failed": [0] * 10})
    assert throughput_rps(counts, 1.0) == 20.0
    assert math.isnan(throughput_rps(counts.iloc[:0], 1.0))


def test_harvest_of_a_sampled_run_counts_every_request(small_run, meta, tmp_path):
    """The small run's raw records hold 9 requests; its histograms say the workers saw 40
    (3 failed), because the config kept a 20% sample of the successful ones."""
    config = json.loads(storage.read_text(small_run.config_uri)) if storage.exists(
        small_run.config_uri) else {}
    storage.write_text(small_run.config_uri, json.dumps({**config, "record_sample": 0.2}))
    lines = [hdr.record_line(ts=1000.0 + i, interval_s=1.0, worker="1",
                             signature="serving_default", ok=ok, failed=failed, hist=h)
             for i, (ok, failed) in enumerate([(10, 0), (10, 1), (9, 1), (8, 1)])
             for h in [hdr.new_histogram()] if not hdr.record_many_ms(h, [25.0] * ok)]
    storage.write_text(storage.join(hdr.histograms_dir(small_run), "worker-1-000000.jsonl"),
                       "\n".join(lines) + "\n")
    result = harvest_run(small_run, meta, f"duckdb://{tmp_path}/wh.duckdb")
    figures = result["figures"]
    assert (figures["requests"], figures["failures"]) == (40, 3)
    assert figures["error_rate"] == 3 / 40
    assert 25.0 <= figures["p50_ms"] <= 25.0 * 1.01  # from the histograms: within 1%
    ts = pd.read_parquet(storage.local_path(small_run.table_uri("timeseries")))
    rate = ts[(ts["metric"] == sc.REQUEST_RATE_RPS) & (ts["dimension"] == "all")]
    assert rate["value"].tolist() == [10.0, 11.0, 10.0, 9.0]
    requests = pd.read_parquet(storage.local_path(small_run.table_uri("requests")))
    assert (requests["source"] == "client").sum() < 40  # the table keeps the sample
