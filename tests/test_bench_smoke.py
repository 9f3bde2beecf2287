"""Smoke test of the load-generator benchmark (bench/loadgen.py): it runs end to end and
writes the JSON its README documents. No figure is asserted: timings are not tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from caio_testing import REPO


@pytest.mark.slow
def test_bench_loadgen_writes_its_json(tmp_path):
    out = tmp_path / "loadgen.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "loadgen.py"), "--seconds", "2", "--users", "4",
         "--clients", "stock_fasthttp,caio_predict", "--responder", "python", "--out", str(out)],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result) >= {"clients", "ratios", "targets", "responder", "machine", "command"}
    assert set(result["clients"]) == {"stock_fasthttp", "caio_predict"}
    for name, client in result["clients"].items():
        assert client["requests"] > 0 and client["rps"] > 0, name
        assert {"seconds", "failures"} <= set(client), name
        assert client["failures"] == 0, name
    assert result["clients"]["caio_predict"]["all_recorded"] is True
    assert result["ratios"]["stock_fasthttp"] == 1.0
    assert result["responder"]["kind"] == "python"
    assert {"cores", "python", "locust"} <= set(result["machine"])
    assert "target caio_predict >= 1.0x stock_fasthttp" in proc.stdout


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
         "--rate", "2000", "--out", str(out)],
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
    assert {t["name"].split(" ")[0] for t in result["targets"]} == {"harvest", "peak"}
    assert result["bytes_per_record"]["requests_parquet"] > 0
    assert "ratio product / limit" in proc.stdout

    table = _load_bench_module("run_all").summary(results)
    assert "harvest" in table and "records/s" in table
