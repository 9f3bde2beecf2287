"""Verdicts from a real DuckDB warehouse: baseline choice, stored rows, replace on re-run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from caio_operators.analysis import verdicts
from caio_operators.results.consolidate import build_tables
from caio_operators.results.warehouse import open_warehouse

T0 = 1_700_000_000


def run_tables(run_id: str, version: str, start: float, scale: float, status="success",
               seed=0, rps=50, seconds=20, params=None, provenance=None):
    """A constant-load run: ``rps`` requests per second, lognormal latency x ``scale``."""
    rng = np.random.default_rng(seed)
    n = rps * seconds
    ts = start + np.sort(rng.random(n)) * seconds
    lat = rng.lognormal(np.log(40.0), 0.25, n) * scale
    client = pd.DataFrame({"ts": ts, "latency_ms": lat, "ok": True, "status_code": 200,
                           "signature": "serving_default", "worker": "0", "bytes": 10,
                           "error": ""})
    empty_server = client.iloc[:0].rename(columns={"worker": "replica", "bytes": "instances"})
    meta = {"run_id": run_id, "dag_id": "caio_load_test", "target": "local",
            "protocol": "tfserving", "model_name": "tiny", "model_version": version,
            "model_source": "builtin:tiny", "weights": "random", "signature": "serving_default",
            "load_shape": "constant", "users": 4, "workers": 1, "replicas": 2,
            "status": status, "started_at": start, "ended_at": start + seconds,
            "provenance": provenance or {}, "params": params or {}}
    samples = pd.DataFrame(columns=["ts", "replica", "pid", "cpu_percent", "rss_mb"])
    history = pd.DataFrame(columns=["ts", "users", "name"])
    return build_tables(meta, client, empty_server, samples, history)


@pytest.fixture
def warehouse(tmp_path):
    wh = open_warehouse(f"duckdb://{tmp_path}/wh.duckdb")
    for run_id, version, start, scale, status, seed in (
            ("a1", "v1", T0, 1.0, "success", 1),
            ("a2", "v1", T0 + 100, 1.0, "failed", 2),   # failed: never a baseline
            ("a3", "v1", T0 + 200, 1.3, "success", 3),  # 30% slower than a1
            ("b1", "v2", T0 + 300, 1.0, "success", 4)):
        wh.replace_run(run_tables(run_id, version, start, scale, status, seed), run_id)
    return wh


def test_previous_successful_run_of_the_same_version_is_the_baseline(warehouse):
    out = verdicts.judge_run(warehouse, "a3", local_machine_type="e2-standard-4")
    assert (out["baseline_run_id"], out["baseline_rule"]) == ("a1", "previous")
    assert out["verdict"] == "regression" and "p95_ms" in out["reason"]
    assert out["cost_basis"] == "throughput_rps" and out["cost_per_hour"] > 0
    stored = warehouse.query("SELECT verdict, baseline_run_id, cost_per_1k, price_date "
                             "FROM verdicts WHERE run_id = 'a3'")
    assert list(stored["verdict"]) == ["regression"] and stored["price_date"].iloc[0]
    rows = warehouse.query("SELECT metric, change_pct, ci_low_pct, worse FROM comparisons "
                           "WHERE run_id = 'a3' ORDER BY metric")
    assert list(rows["metric"]) == ["max_sustainable_rps", "p50_ms", "p95_ms", "p99_ms",
                                    "throughput_rps"]
    p95 = rows.set_index("metric").loc["p95_ms"]
    assert 20 < p95["change_pct"] < 40 and p95["ci_low_pct"] > 0 and p95["worse"]
    # judging again replaces the rows
    verdicts.judge_run(warehouse, "a3")
    assert len(warehouse.query("SELECT * FROM verdicts")) == 1
    assert len(warehouse.query("SELECT * FROM comparisons")) == 5
    # and re-harvesting the run drops its stale verdict with its other rows
    warehouse.replace_run(run_tables("a3", "v1", T0 + 200, 1.3, seed=3), "a3")
    assert warehouse.query("SELECT * FROM verdicts").empty


def test_named_baseline_version_and_no_baseline(warehouse):
    out = verdicts.judge_run(warehouse, "a3", baseline_version="v2")
    assert (out["baseline_run_id"], out["baseline_rule"]) == ("b1", "version:v2")
    assert out["verdict"] == "regression"
    first = verdicts.judge_run(warehouse, "a1")
    assert first["verdict"] == "no baseline" and first["baseline_run_id"] is None
    assert first["cost_per_hour"] == 0.0 and "cost 0" in first["cost_note"]


def test_per_second_bins_cover_the_steady_window():
    ts = T0 + np.arange(0, 10, 0.1)  # 10 req/s for 10 s; steady window [T0+0.99, T0+8.91)
    counts = verdicts.per_second_ok(ts, np.ones(ts.size, bool))
    assert counts.tolist() == [10.0] * 7


def test_history_report_marks_regressions(warehouse, tmp_path):
    from caio_operators.analysis.reports import history_report

    verdicts.judge_run(warehouse, "a3")
    bucket = f"file://{tmp_path}/bucket"
    out = history_report(warehouse, bucket)
    assert (out["runs"], out["regressions"]) == (4, 1)
    page = (tmp_path / "bucket" / "reports" / "history.html").read_text()
    assert page.count("class='chart-box'") == 3  # latency, throughput, cost
    assert "tiny:v1" in page and "tiny:v2" in page and "regression" in page


def test_rank_variants_by_capacity_then_latency():
    from caio_operators.analysis.reports import rank_variants

    rows = [{"variant": "slow", "status": "success", "throughput_rps": 10.0, "p95_ms": 90.0},
            {"variant": "down", "status": "failed", "throughput_rps": None},
            {"variant": "fast", "status": "success", "throughput_rps": 40.0, "p95_ms": 20.0}]
    ranked = rank_variants(rows)
    assert [(r["variant"], r["rank"]) for r in ranked] == [("fast", 1), ("slow", 2),
                                                         ("down", None)]
    assert ranked[0]["capacity_basis"] == "throughput_rps"
    with_peak = rank_variants([{**rows[0], "max_sustainable_rps": 50.0},
                               {**rows[2], "max_sustainable_rps": 45.0}])
    assert [r["variant"] for r in with_peak] == ["slow", "fast"]
    assert with_peak[0]["capacity_basis"] == "max_sustainable_rps"


def test_a_missing_price_leaves_the_verdict_unpriced(warehouse):
    out = verdicts.judge_run(warehouse, "a3", local_machine_type="no-such-machine")
    assert out["verdict"] == "regression" and out["cost_per_hour"] is None
    assert "not priced" in out["cost_note"] and "no-such-machine" in out["cost_note"]


@pytest.mark.parametrize("fail", [True, False])
def test_a_regression_fails_the_run_only_when_asked(warehouse, tmp_path, images_dir, fail):
    import dataclasses

    from caio_operators import pipeline
    from caio_operators.spec import param_schema, validate_params

    spec = validate_params(
        {"model_name": "tiny", "model_version": "v1", "warehouse": warehouse.uri,
         "fail_on_regression": fail, "regression_percentile": "p99"},
        param_schema(tmp_path, images_dir), dag_id="caio_load_test", airflow_run_id="manual")
    spec = dataclasses.replace(spec, run_id="a3")
    if fail:
        with pytest.raises(pipeline.RegressionFound, match=r"a3 regressed against a1.*p99_ms"):
            pipeline.judge(spec)
    else:
        assert pipeline.judge(spec)["verdict"] == "regression"  # stored, warned
    stored = warehouse.query("SELECT verdict, percentile FROM verdicts WHERE run_id = 'a3'")
    assert stored.values.tolist() == [["regression", "p99"]]


# ---------------------------------------------------------------- comparable baselines

#: the default demo's benchmark (ResNet101 V2, local target, staircase, 2 replicas)
DEMO = {"target": "local", "signature": "serving_preprocess", "instances_per_request": 1,
        "images_uri": "/imgs", "load_shape": "staircase", "duration_s": 80, "workers": 1,
        "load_runner": "local", "record_sample": 1.0, "replicas": 2, "server_threads": 0,
        "server_batch_max": 0, "users": 8, "spawn_rate": 4.0, "think_time_s": 0.0,
        "step_users": 2, "step_duration_s": 20, "model_source": "builtin:tiny",
        "endpoint_url": ""}
#: the issue's second run: an existing endpoint, open loop at 100 req/s, another model
ENDPOINT = {**DEMO, "target": "endpoint", "protocol": "caip", "load_shape": "open_rate",
            "rate": 100.0, "rate_profile": "constant", "arrivals": "constant",
            "max_in_flight": 256, "endpoint_url": "http://10.0.0.9/v1/models/m:predict"}
HOST = {"machine": "x86_64", "cpu_count": 8}


def _store(wh, run_id, version, start, scale, params, seed, benchmark_column=True):
    tables = run_tables(run_id, version, start, scale, seed=seed, params=params,
                        provenance=HOST)
    if not benchmark_column:  # a row harvested before the fingerprint existed
        tables["runs"] = tables["runs"].assign(fingerprint=None, benchmark=None)
    wh.replace_run(tables, run_id)


@pytest.fixture
def benchmarks(tmp_path):
    wh = open_warehouse(f"duckdb://{tmp_path}/bench.duckdb")
    _store(wh, "demo-1", "v1", T0, 1.0, DEMO, 1, benchmark_column=False)
    _store(wh, "ep-1", "v1", T0 + 100, 0.4, ENDPOINT, 2)  # latest, but another benchmark
    _store(wh, "demo-2", "v1", T0 + 200, 1.3, DEMO, 3)
    _store(wh, "one-replica", "v1", T0 + 300, 1.0, {**DEMO, "replicas": 1}, 4)
    _store(wh, "v2-demo", "v2", T0 + 400, 1.0, {**DEMO, "model_source": "builtin:x"}, 5)
    return wh


def test_the_baseline_is_the_previous_run_with_the_same_fingerprint(benchmarks):
    out = verdicts.judge_run(benchmarks, "demo-2")
    # ep-1 is more recent but measured an endpoint at 100 req/s: skipped. demo-1 has no
    # fingerprint column (an older row): its params say it is the same benchmark
    assert (out["baseline_run_id"], out["baseline_rule"]) == ("demo-1", "previous")
    assert out["verdict"] == "regression"
    fingerprints = benchmarks.query("SELECT run_id, fingerprint FROM runs ORDER BY run_id")
    assert pd.isna(fingerprints.set_index("run_id")["fingerprint"]["demo-1"])
    # a named version with the same fingerprint, whatever its model source
    out = verdicts.judge_run(benchmarks, "demo-2", baseline_version="v2")
    assert (out["baseline_run_id"], out["verdict"]) == ("v2-demo", "regression")


def test_no_comparable_baseline_names_the_nearest_run_and_the_fields(benchmarks):
    out = verdicts.judge_run(benchmarks, "ep-1")
    assert (out["verdict"], out["baseline_run_id"]) == ("no comparable baseline", None)
    assert "demo-1" in out["reason"]
    assert "target 'endpoint' vs 'local'" in out["reason"]
    assert "load_shape 'open_rate' vs 'staircase'" in out["reason"]
    assert "model_source" not in out["reason"]  # both builtin:tiny

    out = verdicts.judge_run(benchmarks, "one-replica")
    assert out["verdict"] == "no comparable baseline"
    assert "demo-2" in out["reason"] and "replicas 1 vs 2" in out["reason"]
    stored = benchmarks.query("SELECT verdict, baseline_run_id, reason FROM verdicts "
                              "WHERE run_id = 'one-replica'")
    assert stored["verdict"].tolist() == ["no comparable baseline"]
    assert stored["baseline_run_id"].isna().all() and "replicas" in stored["reason"][0]
    assert benchmarks.query("SELECT * FROM comparisons WHERE run_id = 'one-replica'").empty


def test_a_named_baseline_of_another_benchmark_is_not_comparable(benchmarks):
    out = verdicts.judge_run(benchmarks, "demo-2", baseline_run_id="ep-1")
    # ep-1 is 2.5x faster: without the check this would read "regression"
    assert (out["verdict"], out["baseline_run_id"], out["baseline_rule"]) == (
        "not comparable", "ep-1", "run:ep-1")
    assert "target 'local' vs 'endpoint'" in out["reason"]
    with pytest.raises(ValueError, match="baseline run 'nope' is not in the warehouse"):
        verdicts.judge_run(benchmarks, "demo-2", baseline_run_id="nope")


def test_a_sweep_compares_only_across_its_varied_fields(benchmarks, tmp_path):
    from caio_operators.analysis.reports import compare_sweep

    base = {"model_name": "tiny", "machine_type": "", "accelerator_type": "",
            "accelerator_count": 0, "instances_per_request": 1}
    specs = [{**base, "run_id": run_id, "extra": {"variant": name, "varies": ["replicas"]}}
             for run_id, name in (("demo-2", "two"), ("one-replica", "one"), ("ep-1", "ep"))]
    out = compare_sweep(benchmarks, specs, f"file://{tmp_path}/bucket", "sweep-1")
    by = {r["variant"]: r["verdict"] for r in out["ranking"]}
    # replicas is what the sweep varies: compared; the endpoint variant measured something
    # else besides (target, load shape): not comparable, never an improvement
    assert by == {"two": "baseline", "one": "improvement", "ep": "not comparable"}
    reason = benchmarks.query("SELECT reason FROM verdicts WHERE run_id = 'ep-1'")["reason"][0]
    assert "outside the fields the sweep varies" in reason and "target" in reason
    assert "replicas" not in reason
