"""peak_search with real Locust processes (a master and two workers) against a real loopback
server of known capacity: it serves one request at a time in SERVICE_MS, so it sustains at
most 1000 / SERVICE_MS req/s and its queue (and latency) grows without bound above that. The
search must find a rate a little under that capacity, judge every step, and write its
progress file; harvest turns it into runs / timeseries rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_open_rate import run_load

from caio_operators.layout import RunLayout
from caio_operators.results.harvest import harvest_run

SERVICE_MS = 10.0  # conftest.SERIAL_SERVICE_S: capacity 100 req/s


@pytest.mark.slow
def test_peak_search_finds_the_capacity_of_a_serial_server(tmp_path: Path, serial_server):
    capacity = 1000.0 / SERVICE_MS
    peak = {"slo_ms": 100.0, "slo_percentile": 99.0, "max_error_rate": 0.01,
            "precision": 0.1, "window_s": 2.0, "min_requests": 100}
    load = run_load(tmp_path, "peak", serial_server.url, load_shape="peak_search", rate=40.0,
                    duration_s=150, max_in_flight=128, users=1, spawn_rate=1, peak=peak)

    search = json.loads((load / "peak" / "search.json").read_text())
    steps = search["steps"]
    print("peak search:", search["max_sustainable_rps"], search["reason"],
          [(round(s["rate"], 1), s["passed"]) for s in steps])
    assert search["status"] == "converged", search["reason"]
    best = search["max_sustainable_rps"]
    passed = [s["rate"] for s in steps if s["passed"]]
    failed = [s["rate"] for s in steps if not s["passed"]]
    # No rate above the server's capacity can pass. Where below it the server breaks depends
    # on how much CPU its Python overhead gets on this (shared) machine: the overloaded
    # steps show it, as the most the server delivered in any of their windows. The search
    # must end close under that (precision 10%, throughput tolerance 10%).
    overloaded = [w["throughput_rps"] for w in search["windows"] if w["rate"] in failed]
    assert best <= capacity, search
    assert best >= 0.75 * max(overloaded), (best, max(overloaded))
    assert passed and failed and max(passed) == best < min(failed)
    assert (min(failed) - best) / best < peak["precision"] + 1e-9
    assert all(w["workers"] == 2 for w in search["windows"])  # both workers in every window

    harvested = harvest_run(RunLayout(f"file://{tmp_path}/bucket", "peak"),
                            {"run_id": "peak", "load_shape": "peak_search"},
                            f"duckdb://{tmp_path}/warehouse.duckdb")
    assert harvested["figures"]["max_sustainable_rps"] == best
