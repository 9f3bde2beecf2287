"""Smoke test of the load-generator benchmark (bench/loadgen.py): it runs end to end, both
parts (efficiency with the open-loop client, and fidelity at a tiny size), and writes the
JSON its README documents. No figure is compared: timings are not tests."""

from __future__ import annotations

import functools
import importlib
import json
import subprocess
import sys

import pytest
from caio_testing import REPO


@pytest.mark.slow
def test_bench_loadgen_writes_its_json(tmp_path):
    out = tmp_path / "loadgen.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "loadgen.py"), "--seconds", "3", "--users", "4",
         "--clients", "stock_fasthttp,caio_predict,caio_open_loop", "--responder", "python",
         "--fidelity-rate", "50", "--fidelity-seconds", "3", "--stall-period-s", "1.5",
         "--stall-s", "0.3", "--rounds", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result) >= {"clients", "ratios", "targets", "responder", "machine", "command"}
    assert set(result["clients"]) == {"stock_fasthttp", "caio_predict", "caio_open_loop"}
    for name, client in result["clients"].items():
        assert client["requests"] > 0 and client["rps"] > 0, name
        assert {"seconds", "failures"} <= set(client), name
        assert client["failures"] == 0, name
    assert result["clients"]["caio_predict"]["all_recorded"] is True
    assert result["ratios"]["stock_fasthttp"] == 1.0
    assert result["responder"]["kind"] == "python"
    assert {"cores", "python", "locust"} <= set(result["machine"])
    assert "target caio_predict >= 1.15x stock_fasthttp per CPU-second" in proc.stdout
    assert "target caio_open_loop >= 1.0x stock_fasthttp per CPU-second" in proc.stdout
    for name, client in result["clients"].items():  # 2 rounds, judged on the median
        spread = client["spread"]["rps"]  # (per CPU-second: None when 3 s is too short)
        assert spread["n"] == 2 and spread["min"] <= spread["median"] <= spread["max"], name
        assert client["rps"] == spread["median"] and len(client["rounds_rps"]) == 2, name
    open_loop = result["clients"]["caio_open_loop"]
    # offered twice stock_fasthttp's first round, per CPU-second (else req/s), in every round
    stock = result["clients"]["stock_fasthttp"]
    reference = stock["rounds_rps_per_cpu"][0] or stock["rounds_rps"][0]
    assert open_loop["offered_rate"] == pytest.approx(2 * reference, abs=0.1)
    assert open_loop["intended"] == (open_loop["requests"] + open_loop["dropped_cap"]
                                     + open_loop["dropped_late"])

    fidelity = result["fidelity"]
    for key in ("true_p99_ms", "open_p99_ms", "closed_p99_ms", "true_p999_ms", "open_p999_ms",
                "closed_p999_ms", "rate", "stall_period_s", "stall_length_s"):
        assert isinstance(fidelity[key], int | float) and fidelity[key] > 0, key
    for key in ("open_error_p99_pct", "closed_error_p99_pct", "open_error_p999_pct",
                "closed_error_p999_pct"):
        assert isinstance(fidelity[key], int | float), key
    assert fidelity["requests"]["intended"] > 0 and fidelity["requests"]["closed"] > 0
    assert isinstance(fidelity["target"]["met"], bool)
    assert fidelity["rounds"] == 2 and fidelity["spread"]["open_error_p99_pct"]["n"] == 2
    sizes = sorted(abs(e) for e in (fidelity["spread"]["open_error_p99_pct"]["min"],
                                    fidelity["spread"]["open_error_p99_pct"]["max"]))
    assert fidelity["target"]["median_error_pct"]["open_error_p99_pct"] == pytest.approx(
        sum(sizes) / 2, abs=0.01)
    assert "target open loop within 10% of the truth" in proc.stdout


@pytest.fixture
def fidelity(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    return importlib.import_module("fidelity")


def test_fidelity_ground_truth_with_literal_numbers(fidelity):
    stall = fidelity.Stall(period_s=10.0, stall_s=1.0, service_ms=1.0, origin=100.0)
    truth = functools.partial(fidelity.true_latency_ms, stall=stall)
    assert truth(100.0) == 1001.0  # a stall starts: all of it, plus the service time
    assert truth(100.25) == 751.0
    assert truth(101.0) == 1.0  # the stall is over
    assert (truth(109.5), truth(110.5), truth(99.5)) == (1.0, 501.0, 1.0)

    assert fidelity.nearest_rank(range(1, 1001), 99) == 990
    assert fidelity.nearest_rank(range(1, 1001), 99.9) == 999
    assert fidelity.nearest_rank([3, 1, 2], 100) == 3 and fidelity.nearest_rank([5], 50) == 5
    with pytest.raises(ValueError):
        fidelity.nearest_rank([], 99)

    # 200 req/s for 30 s: 3 stalls of 200 sends each, 1001, 996, ..., 6 ms; 5 400 at 1 ms.
    # p99 is rank 5 940, the 61st from the top: 3 copies each of the 20 highest, then 901.
    intended = [100.0 + k / 200.0 for k in range(6000)]
    assert fidelity.nearest_rank([truth(t) for t in intended], 99) == pytest.approx(901.0)
    assert fidelity.nearest_rank([truth(t) for t in intended], 99.9) == pytest.approx(991.0)

    record = fidelity.Record
    open_loop = [record(t, truth(t) * 1.05, True, "") for t in intended]
    # a dropped send (outside a stall) still counts in the truth, not in the reported figure
    open_loop.append(record(105.0, float("nan"), False, "dropped: 4 requests already in flight"))
    closed = [record(100.0 + k / 100.0, 2.0 if k % 300 else 900.0, True, "") for k in range(3000)]
    got = fidelity.figures(open_loop, closed, stall)
    assert got["open_p99_ms"] == pytest.approx(901.0 * 1.05, abs=0.01)
    assert got["open_error_p99_pct"] == pytest.approx(5.0, abs=0.05)
    assert got["closed_p99_ms"] == 2.0 and got["closed_p999_ms"] == 900.0
    assert got["requests"] == {"intended": 6001, "open": 6000, "open_dropped": 1,
                               "open_failed": 0, "closed": 3000, "closed_failed": 0}
    assert fidelity.verdict(got) == {"max_error_pct": 10.0, "met_p99": True,
                                     "met_p999": True, "met": True}
    assert fidelity.verdict(got, max_error_pct=4.0)["met"] is False


def _load_bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_harvest_writes_its_json_and_the_summary_reads_it(tmp_path):
    results = tmp_path / "results"
    out = results / "harvest.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "harvest.py"), "--records", "20000",
         "--rate", "2000", "--rounds", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    gen, product, limit = result["generated"], result["product"], result["limit"]
    assert gen["records"] == 20000 and 0 < gen["server_records"] <= 20000
    assert gen["files"]["client"] == 4 * 5  # 4 workers, a file per 2-s flush of a 10-s run
    # the product harvested every record it was given, client and server
    assert product["counts"]["requests"] == gen["records"] + gen["server_records"]
    assert product["figures"]["requests"] == 20000
    assert product["figures"]["failures"] == gen["failures"]
    assert product["skipped_files"] == 0
    assert limit["rows"] == gen["records"] + gen["server_records"]
    for step in (product, limit):
        assert step["seconds"] > 0 and step["peak_mb"] > step["baseline_mb"] > 0
    assert {t["name"].split(" ")[0] for t in result["targets"]} == {"harvest", "time", "peak"}
    same_pool = result["limit_same_pool"]
    # the limit with pyarrow's default pool (mimalloc in the pinned wheel), and with harvest's
    assert product["pool"] == same_pool["pool"] == "jemalloc" and limit["pool"] == "mimalloc"
    assert same_pool["rows"] == limit["rows"]
    for step in (product, limit, same_pool):  # 2 rounds, judged on the median
        assert step["spread"]["seconds"]["n"] == 2 == len(step["rounds_seconds"])
        assert step["seconds"] == step["spread"]["seconds"]["median"]
    assert result["bytes_per_record"]["requests_parquet"] > 0
    assert "ratio product / limit" in proc.stdout

    table = _load_bench_module("run_all").summary(results)
    assert "harvest" in table and "records/s" in table


@pytest.mark.slow
def test_bench_serving_writes_its_json(tmp_path):
    """The serving benchmark end to end on the tiny architecture: the real server and the
    in-process limit side by side, both signatures (the default config only: the batching
    config runs the same code with another server flag, which tests/targets covers)."""
    out = tmp_path / "serving.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "serving.py"), "--source", "builtin:tiny",
         "--seconds", "2", "--rounds", "1", "--warmup-seconds", "1", "--batch-max", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["source"] == "builtin:tiny" and result["target_ratio"] == 0.9
    rows = result["rows"]
    assert {r["signature"] for r in rows} == {"serving_default", "serving_preprocess"}
    for row in rows:  # both sides really ran and were compared
        assert row["limit_pps"] > 0 and row["server_pps"] > 0 and row["ratio"] > 0
        assert row["ratio_per_cpu"] > 0
    assert result["targets"]
