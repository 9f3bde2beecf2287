"""The three kinds of report, written from a DuckDB warehouse that real consolidation filled
from raw records (``analysis_data.raw_staircase``): two closed-loop staircase runs of two
versions (v2 30% slower), an open-loop run that dropped sends and a peak search (its search
``caio_testing.PEAK_SEARCH_REPORT``). Used by the browser test and to take the screenshots
in docs/images (``python tests/analysis/report_pages.py``)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from analysis_data import T0, raw_staircase
from caio_testing import PEAK_SEARCH_REPORT

from caio_operators import storage
from caio_operators.analysis import verdicts
from caio_operators.analysis.report import analyse_run
from caio_operators.analysis.reports import compare_sweep, history_report
from caio_operators.layout import RunLayout
from caio_operators.results.consolidate import build_tables
from caio_operators.results.peak import apply_search
from caio_operators.results.warehouse import open_warehouse

#: the benchmark both staircase runs measured (their fingerprint)
STAIRCASE = {"target": "local", "signature": "serving_default", "instances_per_request": 1,
             "images_uri": "/imgs", "load_shape": "staircase", "duration_s": 24,
             "workers": 2, "load_runner": "local", "record_sample": 1.0, "replicas": 2,
             "server_threads": 0, "server_batch_max": 0, "users": 4, "spawn_rate": 4.0,
             "think_time_s": 0.0, "step_users": 1, "step_duration_s": 8,
             "model_source": "builtin:tiny", "endpoint_url": "", "slo_ms": 60.0,
             "rate": 10.0, "project": "", "region": "us-central1", "max_in_flight": 64}
OPEN_RATE = {**STAIRCASE, "load_shape": "open_rate", "rate": 20.0, "rate_profile": "constant",
             "arrivals": "poisson"}
#: the local machine priced as this machine type (the default price table has it)
PRICED = {"local_machine_type": "n1-standard-4"}
PEAK_SEARCH = {**OPEN_RATE, "load_shape": "peak_search", "max_rate": 100.0,
               "slo_percentile": 99.0, "slo_ms": 100.0}
LATE = "dropped: could not start within 1000 ms (late by 1250 ms)"
CAP = "dropped: 64 requests already in flight"


def _raw(seed: int, offset: float, scale: float, drops: bool = False):
    client, server, samples, history = raw_staircase(seed)
    client = client.assign(ts=client["ts"] + offset, latency_ms=client["latency_ms"] * scale)
    server = server.assign(ts=server["ts"] + offset, latency_ms=server["latency_ms"] * scale)
    samples = samples.assign(ts=samples["ts"] + offset)
    history = history.assign(ts=history["ts"] + offset)
    if drops:  # the last 8 s overloaded the generator: every 5th send dropped, by cause
        late = client["ts"] >= client["ts"].max() - 8
        picked = np.flatnonzero(late.to_numpy())[::5]
        errors = np.where(np.arange(picked.size) % 2, CAP, LATE)
        client.loc[picked, ["ok", "latency_ms", "status_code", "error"]] = (False, np.nan, 0,
                                                                            "")
        client.loc[picked, "error"] = errors
    return client, server, samples, history


def _meta(run_id: str, version: str, start: float, params: dict) -> dict:
    return {"run_id": run_id, "dag_id": "caio_load_test", "target": "local",
            "protocol": "tfserving", "model_name": "tiny", "model_version": version,
            "model_source": "builtin:tiny", "weights": "random",
            "signature": "serving_default", "load_shape": params["load_shape"],
            "users": params["users"], "workers": 2, "replicas": 2, "status": "success",
            "started_at": start, "ended_at": start + 24,
            "provenance": {"machine": "x86_64", "cpu_count": 8, "git_sha": "abc123"},
            "params": params}


def build(root: Path) -> dict[str, Path]:
    """Write the reports under ``root``; ``{name: path of its HTML}``."""
    warehouse = open_warehouse(f"duckdb://{root}/wh.duckdb")
    bucket = storage.to_uri(root / "bucket")
    runs = (("stair-v1", "v1", 0.0, 1.0, STAIRCASE, False),
            ("stair-v2", "v2", 3600.0, 1.3, STAIRCASE, False),
            ("open-v2", "v2", 7200.0, 1.0, OPEN_RATE, True),
            ("peak-v2", "v2", 10800.0, 1.0, PEAK_SEARCH, False))
    for seed, (run_id, version, offset, scale, params, drops) in enumerate(runs, 1):
        tables = build_tables(_meta(run_id, version, T0 + offset, params),
                              *_raw(seed, offset, scale, drops))
        if params["load_shape"] == "peak_search":  # its search, as the harvest adds it
            windows = [{**w, "ts": w["ts"] + offset} for w in PEAK_SEARCH_REPORT["windows"]]
            tables = apply_search(tables, {**PEAK_SEARCH_REPORT, "windows": windows})
        warehouse.replace_run(tables, run_id)
    pages = {}
    for run_id, baseline in (("stair-v1", None), ("stair-v2", "stair-v1"), ("open-v2", None),
                             ("peak-v2", None)):
        verdict = verdicts.judge_run(warehouse, run_id, baseline_run_id=baseline, **PRICED)
        out = analyse_run(warehouse.uri, run_id, RunLayout(bucket, run_id), verdict)
        pages[f"report-{run_id}"] = storage.local_path(out["report_uri"])
    specs = [{"run_id": run_id, "target": "local", "extra": {"variant": version,
                                                             "varies": ["model_version"]}}
             for run_id, version in (("stair-v1", "v1"), ("stair-v2", "v2"))]
    pages["comparison"] = storage.local_path(
        compare_sweep(warehouse, specs, bucket, "sweep-1", PRICED)["report_uri"])
    pages["history"] = storage.local_path(history_report(warehouse, bucket)["report_uri"])
    return {name: Path(path) for name, path in pages.items()}


def screenshot(html: Path, png: Path, max_height: int = 2600) -> None:
    """A headless Chromium screenshot of ``html``, cut at ``max_height`` pixels."""
    import importlib.util
    import io

    from caio_testing import REPO
    from PIL import Image

    spec = importlib.util.spec_from_file_location("browser", REPO / "tests/scheduler/browser.py")
    browser = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(browser)
    with tempfile.TemporaryDirectory() as profile:
        chromium = browser.Browser(Path(profile), width=1200, height=900)
        try:
            chromium.goto(html.as_uri())
            chromium.wait_js("document.readyState === 'complete' && !!window.caioCharts")
            chromium.screenshot(png)
        finally:
            chromium.close()
    with Image.open(io.BytesIO(png.read_bytes())) as image:
        image.crop((0, 0, image.width, min(image.height, max_height))).save(png,
                                                                          optimize=True)


if __name__ == "__main__":
    # report_pages.py OUT_DIR [IMAGES_DIR [RUN_REPORT]]: write the reports to OUT_DIR; with
    # IMAGES_DIR, screenshot them there (RUN_REPORT: a real run's report.html instead)
    written = build(Path(sys.argv[1]))
    if len(sys.argv) > 2:
        images = Path(sys.argv[2])
        run = Path(sys.argv[3]) if len(sys.argv) > 3 else written["report-stair-v2"]
        for html, name in ((run, "report"), (written["comparison"], "comparison"),
                           (written["history"], "history")):
            screenshot(html, images / f"{name}.png")
    print(written)
