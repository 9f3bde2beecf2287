"""Raw chunks -> the three tables, checked against hand-computed numbers."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from caio_operators.layout import RunLayout
from caio_operators.results import readers
from caio_operators.results import schema as sc
from caio_operators.results.consolidate import build_tables


def tables_of(layout, meta, interval_s=1.0):
    raw = readers.read_run_inputs(layout)
    return build_tables(meta, raw.client, raw.server, raw.samples, raw.locust_history,
                        interval_s=interval_s)


def series(ts_table, metric, dimension="all"):
    rows = ts_table[(ts_table["metric"] == metric) & (ts_table["dimension"] == dimension)]
    seconds = rows["ts"].astype("int64") // 10**6  # us -> s
    return dict(zip(seconds.tolist(), rows["value"].tolist(), strict=True))


def test_tables_match_the_schema_exactly(small_run, meta):
    tables = tables_of(small_run, meta)
    assert set(tables) == set(sc.TABLES)
    for name, frame in tables.items():
        sc.validate(name, frame)


def test_runs_row_figures(small_run, meta):
    run = tables_of(small_run, meta)["runs"].iloc[0]
    assert (run["run_id"], run["status"], run["target"], run["users"]) == ("run-1", "success",
                                                                          "local", 2)
    assert (run["requests"], run["failures"]) == (8, 2)
    assert run["error_rate"] == pytest.approx(0.25)
    # successful latencies 10 20 30 40 50 60 (nearest rank)
    assert (run["p50_ms"], run["p90_ms"], run["p95_ms"], run["p99_ms"], run["p999_ms"]) == (
        30.0, 60.0, 60.0, 60.0, 60.0)
    assert (run["max_ms"], run["mean_ms"]) == (60.0, 35.0)
    # steady window [1000.48, 1003.52): 4 successes in 3.04 s
    assert run["throughput_rps"] == pytest.approx(4 / 3.04)
    assert (run["server_p50_ms"], run["server_p99_ms"]) == (12.0, 30.0)
    assert (run["peak_cpu_pct"], run["peak_memory_mb"]) == (90.0, 220.0)
    assert run["duration_s"] == 4.0
    assert run["started_at"] == pd.Timestamp(1000, unit="s", tz="UTC")
    assert run["harvested_at"] == pd.Timestamp("2024-05-01T12:00:00Z")
    assert json.loads(run["provenance"]) == {"caio_operators": "0.1.0", "locust": "2.47"}
    assert json.loads(run["params"]) == {"duration_s": 4, "users": 2}


def test_timeseries_per_second(small_run, meta):
    ts = tables_of(small_run, meta)["timeseries"]
    assert series(ts, sc.REQUEST_RATE_RPS) == {1000: 3.0, 1001: 2.0, 1002: 1.0, 1003: 2.0}
    assert series(ts, sc.FAILURE_RATE_RPS) == {1000: 0.0, 1001: 1.0, 1002: 0.0, 1003: 1.0}
    assert series(ts, sc.CLIENT_LATENCY_P50_MS) == {1000: 30.0, 1001: 20.0, 1002: 50.0,
                                                    1003: 60.0}
    assert series(ts, sc.CLIENT_LATENCY_P95_MS)[1000] == 40.0
    assert series(ts, sc.SERVER_LATENCY_P50_MS) == {1000: 12.0, 1001: 16.0}
    assert series(ts, sc.SERVER_REQUEST_RATE_RPS) == {1000: 3.0, 1001: 1.0}
    assert series(ts, sc.CPU_UTILIZATION_PCT, "replica-0") == {1000: 60.0, 1001: 90.0}
    assert series(ts, sc.CPU_UTILIZATION_PCT, "replica-1") == {1000: 20.0}
    assert series(ts, sc.MEMORY_MB, "replica-0") == {1000: 205.0, 1001: 220.0}
    assert series(ts, sc.REPLICAS) == {1000: 2.0, 1001: 1.0}
    # users from Locust's Aggregated rows only
    assert series(ts, sc.USERS) == {1000: 1.0, 1001: 2.0, 1002: 2.0, 1003: 2.0}
    assert not (ts["metric"] == sc.GPU_UTILIZATION_PCT).any()
    assert ts["value"].notna().all()


def test_two_second_intervals(small_run, meta):
    ts = tables_of(small_run, meta, interval_s=2.0)["timeseries"]
    assert series(ts, sc.REQUEST_RATE_RPS) == {1000: 2.5, 1002: 1.5}


def test_requests_table(small_run, meta):
    req = tables_of(small_run, meta)["requests"]
    assert req["source"].value_counts().to_dict() == {"client": 8, "server": 4}
    server = req[req["source"] == "server"]
    assert sorted(server["origin"]) == ["replica-0", "replica-0", "replica-1", "replica-1"]
    client = req[req["source"] == "client"].sort_values("ts")
    assert client["origin"].tolist()[:2] == ["1", "2"]
    assert client["ok"].tolist().count(False) == 2
    errors = client["error"].dropna().tolist()
    assert errors == ["HTTP 503: overloaded", "ConnectionError: refused, retry"]
    assert client["status_code"].isna().sum() == 1
    assert client["ts"].iloc[0] == pd.Timestamp(1000.1, unit="s", tz="UTC")


def test_mixed_signatures_get_their_own_series(meta):
    client = pd.DataFrame({
        "ts": [5.1, 5.2, 5.3], "latency_ms": [10.0, 30.0, 20.0], "ok": [True, True, True],
        "status_code": [200, 200, 200], "worker": ["1", "1", "1"], "bytes": [1, 1, 1],
        "error": ["", "", ""],
        "signature": ["serving_default", "serving_preprocess", "serving_default"]})
    empty = readers.read_run_inputs(RunLayout("file:///nonexistent-bucket", "x"))
    ts = build_tables(meta, client, empty.server, empty.samples, empty.locust_history)[
        "timeseries"]
    dims = set(ts.loc[ts["metric"] == sc.REQUEST_RATE_RPS, "dimension"])
    assert dims == {"all", "serving_default", "serving_preprocess"}
    p50 = ts[(ts["metric"] == sc.CLIENT_LATENCY_P50_MS)].set_index("dimension")["value"]
    assert p50.to_dict() == {"all": 20.0, "serving_default": 10.0, "serving_preprocess": 30.0}


def test_goodput_and_open_loop_drops(meta):
    """Goodput against the params' slo_ms (runs column and series); the sends an open-loop
    generator dropped, per cause, as the locustfile writes them."""
    late = "dropped: could not start within 1000 ms (late by 1200 ms)"
    cap = "dropped: 4 requests already in flight"
    client = pd.DataFrame({
        "ts": [10.1, 10.4, 10.7, 11.2, 11.5, 11.8, 12.3, 12.6, 13.1, 13.9],
        "latency_ms": [50.0, 150.0, 90.0, math.nan, 80.0, math.nan, 100.0, 120.0, 70.0, 60.0],
        "ok": [True, True, True, False, True, False, True, True, True, True],
        "status_code": [200, 200, 200, None, 200, None, 200, 200, 200, 200],
        "worker": "0", "bytes": 1, "signature": "serving_default",
        "error": ["", "", "", late, "", cap, "", "", "", ""]})
    empty = readers.read_run_inputs(RunLayout("file:///nonexistent-bucket", "x"))
    params = {**meta.get("params", {}), "slo_ms": 100.0}
    tables = build_tables({**meta, "params": params}, client, empty.server, empty.samples,
                          empty.locust_history)
    ts = tables["timeseries"]
    # steady window [10.1 + 0.38, 13.9 - 0.38): 10.7, 11.5, 12.3 (= the SLO) and 13.1 within
    # 100 ms; 12.6 too slow; the drops are failures
    assert tables["runs"].iloc[0]["goodput_rps"] == pytest.approx(4 / (3.8 * 0.8))
    assert series(ts, sc.GOODPUT_RPS) == {10: 2.0, 11: 1.0, 12: 1.0, 13: 2.0}
    assert series(ts, sc.DROPPED_RPS, "late") == {10: 0.0, 11: 1.0, 12: 0.0, 13: 0.0}
    assert series(ts, sc.DROPPED_RPS, "in_flight_cap") == {10: 0.0, 11: 1.0, 12: 0.0,
                                                           13: 0.0}
    without = build_tables({**meta, "params": {}}, client.assign(error=""), empty.server,
                           empty.samples, empty.locust_history)
    assert math.isnan(without["runs"].iloc[0]["goodput_rps"])
    assert not without["timeseries"]["metric"].isin([sc.GOODPUT_RPS, sc.DROPPED_RPS]).any()


def test_failed_run_with_nothing_written_still_has_a_runs_row(bucket, meta):
    meta.update(run_id="run-x", status="failed", reason="deploy timed out")
    tables = tables_of(RunLayout(bucket, "run-x"), meta)
    for name, frame in tables.items():
        sc.validate(name, frame)
    assert tables["timeseries"].empty and tables["requests"].empty
    run = tables["runs"].iloc[0]
    assert (run["status"], run["reason"], run["requests"], run["failures"]) == (
        "failed", "deploy timed out", 0, 0)
    assert math.isnan(run["p50_ms"]) and math.isnan(run["throughput_rps"])
    assert math.isnan(run["error_rate"]) and math.isnan(run["peak_cpu_pct"])
    assert run["duration_s"] == 4.0  # from meta


def test_success_without_requests_is_degraded(bucket, meta):
    meta.update(run_id="run-y", started_at=None, ended_at=None)
    run = tables_of(RunLayout(bucket, "run-y"), meta)["runs"].iloc[0]
    assert (run["status"], run["reason"]) == ("degraded", "no client requests were recorded")
    assert pd.isna(run["started_at"]) and math.isnan(run["duration_s"])


def test_times_fall_back_to_the_records(small_run, meta):
    meta.update(started_at=None, ended_at=None)
    run = tables_of(small_run, meta)["runs"].iloc[0]
    # first start 1000.1, last end 1003.9 + 2.5 ms
    assert run["started_at"] == pd.Timestamp(1000.1, unit="s", tz="UTC")
    assert run["duration_s"] == pytest.approx(3.8025)


def test_bad_meta_is_rejected(bucket, meta):
    empty = readers.read_run_inputs(RunLayout(bucket, "z"))
    args = (empty.client, empty.server, empty.samples, empty.locust_history)
    with pytest.raises(ValueError, match="run_id"):
        build_tables({}, *args)
    with pytest.raises(ValueError, match="status"):
        build_tables({**meta, "status": "ok"}, *args)
    with pytest.raises(ValueError, match="interval_s"):
        build_tables(meta, *args, interval_s=0)


def test_a_run_where_every_request_failed_is_failed(tmp_path):
    client = pd.DataFrame({
        "ts": [1000.0, 1000.5, 1001.0], "latency_ms": [1.0, 1.2, 0.9], "ok": [False] * 3,
        "status_code": [0, 0, 503], "signature": ["serving_preprocess"] * 3,
        "worker": ["w"] * 3, "bytes": [0, 0, 10],
        "error": ["ConnectionRefusedError", "ConnectionRefusedError", "HTTP 503"]})
    nothing = "file://" + str(tmp_path / "nothing")
    tables = build_tables({"run_id": "r", "status": "success"}, client,
                          readers.read_server_records(nothing), readers.read_samples(nothing),
                          readers.read_locust_history(nothing + "/locust"))
    row = tables["runs"].iloc[0]
    assert row["status"] == "failed"
    assert row["reason"] == ("all 3 requests failed; most frequent error: "
                             "ConnectionRefusedError")


def test_server_records_before_the_runs_start_are_not_its_own(small_run, meta):
    """A retried load's server (deployed once) also recorded the killed try's requests."""
    from caio_operators.results.records import run_records

    raw = readers.read_run_inputs(small_run, records="arrow")
    server_ts = sorted(raw.server["ts"].to_pylist())
    kept = run_records({**meta, "started_at": server_ts[0]}, raw.client, raw.server)
    assert sorted(kept.server["ts"].to_pylist()) == server_ts
    later = run_records({**meta, "started_at": server_ts[2]}, raw.client, raw.server)
    assert sorted(later.server["ts"].to_pylist()) == server_ts[2:]
