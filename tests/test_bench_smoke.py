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
