"""Real Locust (master + workers as processes) against a real loopback predict server."""

from __future__ import annotations

import csv
import json
import logging
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import psutil
import pytest
from caio_testing import LoopbackHTTPServer
from PIL import Image

from caio_operators.loadgen import launch
from caio_operators.loadgen.local import (
    LocalLauncher,
    format_progress,
    local_launch_spec,
    parse_progress,
)
from caio_operators.loadgen.payload import write_payload

HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
    "99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,"
    "Total Average Response Time,Total Min Response Time,Total Max Response Time,"
    "Total Average Content Size"
)
HISTORY = HISTORY_HEADER + """
1700000001,2,,Aggregated,0.000000,0.000000,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,0,0,0,0.0,0,0,0
1700000002,4,POST,predict:serving_default,150.5,3.0,5,6,6,6,6,6,6,7,8,8,8,300,6,5,5.5,5,8,60
1700000002,4,,Aggregated,150.500000,3.000000,5,6,6,6,6,6,6,7,8,8,8,300,6,5,5.5,5,8,60
1700000003,4,,Aggreg"""  # a row cut in the middle, as a tail read can see it


def test_parse_progress_reads_the_last_whole_aggregated_row():
    # one total so far: Locust's own rate is all there is
    assert parse_progress(HISTORY) == {"users": 4, "rps": 150.5, "requests": 300, "failures": 6}
    assert parse_progress(HISTORY.splitlines()[0]) is None
    assert parse_progress("") is None


def test_parse_progress_rate_comes_from_the_totals_over_the_window():
    agg = ",,Aggregated,{rps},0.0,5,6,6,6,6,6,6,7,8,8,8,{n},{f},5,5.5,5,8,60"
    rows = [(100, 0, 0, 0), (101, 0, 0, 0), (102, 600, 3, 0), (103, 600, 3, 0),
            (104, 600, 3, 0), (105, 1200, 9, 600), (106, 1200, 9, 0), (107, 1200, 9, 0),
            (108, 1800, 12, 0), (109, 1800, 12, 0), (120, 7900, 40, 0)]
    text = HISTORY_HEADER + "".join(
        f"\n{ts},8" + agg.format(rps=rps, n=n, f=f) for ts, n, f, rps in rows)
    # within 10 s of the last change only the last total counts: Locust's rate then
    assert parse_progress(text)["rps"] == 0.0
    # 600 more requests every 3 s between changes: 200 req/s
    assert parse_progress(text.rsplit("\n", 1)[0]) == {
        "users": 8, "rps": 200.0, "requests": 1800, "failures": 12}
    assert parse_progress(text.rsplit("\n", 1)[0], window_s=3)["rps"] == 200.0


def test_format_progress():
    assert format_progress(12.4, {"users": 4, "rps": 150.5, "requests": 300, "failures": 6}) == (
        "load: 12 s elapsed, 4 users, 150.5 req/s, 300 requests, 6 failures (2.0%)")
    assert "waiting for Locust's first stats" in format_progress(3, None)


# ------------------------------------------------------------------ real runs


def _prepare(tmp_path: Path, url: str, **shape) -> tuple[dict, str]:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (80 * i, 120, 200)).save(images / f"img{i}.jpg")
    load = tmp_path / "load"
    payload_uri = write_payload(images, f"file://{load}/payload.json",
                                "serving_preprocess")["payload_uri"]
    cfg = launch.make_config(
        test_id="t-local", predict_url=url, protocol="caip", signature="serving_preprocess",
        payload_uri=payload_uri, output_uri=f"file://{load}", flush_interval_s=2,
        request_timeout_s=5, **shape)
    return cfg, launch.write_config(f"file://{load}/config.json", cfg)


def _raw_records(load: Path) -> list[dict]:
    rows = []
    for path in sorted((load / "requests").glob("*.csv")):
        with path.open() as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def _aggregated(load: Path) -> dict:
    with (load / "locust_stats.csv").open() as handle:
        return next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")


def _assert_no_process_left(launcher: LocalLauncher, marker: str) -> None:
    pids = [p.pid for p in (launcher.master, *launcher.workers) if p is not None]
    assert pids
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        assert proc.info["pid"] not in pids, f"left running: {cmdline}"
        assert marker not in cmdline, f"left running: {cmdline}"


@pytest.mark.slow
def test_distributed_run_records_every_request(tmp_path, predict_server, caplog):
    cfg, config_uri = _prepare(tmp_path, predict_server.url, load_shape="constant", users=4,
                               spawn_rate=50, duration_s=6)
    spec = local_launch_spec(config=cfg, config_uri=config_uri, load_dir=tmp_path / "load",
                             workers=2)
    launcher = LocalLauncher(spec, log=logging.getLogger("test.load"))
    with caplog.at_level(logging.INFO, logger="test.load"):
        result = launcher.run()
    _assert_no_process_left(launcher, str(tmp_path))

    assert result["status"] == "success", result
    assert result["master_exit_code"] == 0 and result["worker_exit_codes"] == [0, 0]
    load = tmp_path / "load"
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv",
                 "locust_report.html"):
        assert (load / name).is_file(), name

    files = sorted((load / "requests").glob("*.csv"))
    assert result["request_files"] == len(files) >= 4  # 2 workers x several 2-s flushes
    workers = {f.name.rsplit("-", 1)[0] for f in files}
    assert len(workers) == 2
    rows = _raw_records(load)
    agg = _aggregated(load)
    total, failures = int(agg["Request Count"]), int(agg["Failure Count"])
    # the same request events feed Locust's stats and the raw records
    assert abs(len(rows) - total) <= max(2, total // 100), (len(rows), total)
    bad = [r for r in rows if r["ok"] == "0"]
    assert abs(len(bad) - failures) <= max(2, failures // 50), (len(bad), failures)
    # the server saw every recorded request (plus at most one in flight per user at stop)
    served = sum(predict_server.counts.values())
    assert 0 <= served - len(rows) <= 4 + 2, (served, len(rows))
    assert predict_server.signatures.keys() == {"serving_preprocess"}

    # both failure kinds: 500s and 200s carrying "error"
    http500 = [r for r in bad if r["status_code"] == "500"]
    error200 = [r for r in bad if r["status_code"] == "200"]
    assert http500 and error200 and len(http500) + len(error200) == len(bad)
    assert all("Prediction failed" in r["error"] for r in error200)
    assert all(r["error"].startswith("HTTP 500") for r in http500)
    expected_share = 1 / 10 + 1 / 7 - 1 / 70  # every 10th fails, every 7th (not 10th) errors
    assert abs(len(bad) / len(rows) - expected_share) < 0.03
    assert all(r["ok"] == "1" and r["status_code"] == "200" and r["error"] == ""
               for r in rows if r not in bad)

    # latencies: the server sleeps 5 ms before answering, so none can be faster
    latencies = [float(r["latency_ms"]) for r in rows]
    assert min(latencies) >= 5.0
    assert 5.0 <= statistics.median(latencies) < 100.0
    ts = [float(r["ts"]) for r in rows]
    assert result["started_at"] <= min(ts) <= max(ts) <= result["ended_at"]
    assert {r["signature"] for r in rows} == {"serving_preprocess"}

    # every worker wrote its own CPU per second beside its records
    cpu_files = sorted((load / "workers").glob("worker-*.csv"))
    assert {f.name.rsplit("-", 1)[0] for f in cpu_files} == workers
    cpu_rows = []
    for path in cpu_files:
        with path.open() as handle:
            cpu_rows.extend(csv.DictReader(handle))
    by_worker: dict[str, list[float]] = {}
    for r in cpu_rows:
        assert result["started_at"] - 5 <= float(r["ts"]) <= result["ended_at"], r
        by_worker.setdefault(r["worker"], []).append(float(r["cpu_percent"]))
    assert {f"worker-{w}" for w in by_worker} == workers
    for percents in by_worker.values():
        assert len(percents) >= 4  # one a second over a 6-s load
        # one gevent process uses at most about one core; sending requests uses some of it
        assert all(0.0 <= p <= 150.0 for p in percents), percents
        assert max(percents) > 1.0, percents

    progress = [r.getMessage() for r in caplog.records if "elapsed" in r.getMessage()]
    assert progress and any("req/s" in line for line in progress)

    span = max(ts) - min(ts)
    wall = result["ended_at"] - result["started_at"]
    print(f"\nlocust vs loopback: {len(rows)} requests in {span:.1f} s = "
          f"{len(rows) / span:.0f} req/s (4 users, 2 workers), median "
          f"{statistics.median(latencies):.1f} ms, whole run {wall:.1f} s; worker CPU % "
          f"{ {w: max(p) for w, p in by_worker.items()} } (max)")


class _SlowObjectStore(BaseHTTPRequestHandler):
    """GCS's media download route (``STORAGE_EMULATOR_HOST``) for one object, answered after
    ``delay_s``: a worker whose payload takes that long to read, while it is connected."""

    body = b""
    delay_s = 0.0

    def do_GET(self):
        time.sleep(self.delay_s)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_the_shape_starts_when_every_worker_has_its_payload(tmp_path, predict_server,
                                                           monkeypatch):
    """A worker connects before its init reads the payload; the shape's clock must wait for
    that read, or a short shape passes with no user sending (CI's Vertex test: 2 requests)."""
    cfg, _ = _prepare(tmp_path, predict_server.url, load_shape="constant", users=4,
                      spawn_rate=50, duration_s=4)
    load = tmp_path / "load"
    store = LoopbackHTTPServer(("127.0.0.1", 0), type("Slow", (_SlowObjectStore,), {
        "body": (load / "payload.json").read_bytes(), "delay_s": 5.0}))
    threading.Thread(target=store.serve_forever, daemon=True).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{store.server_port}")
    cfg["payload_uri"] = "gs://caio-test/load/payload.json"
    config_uri = launch.write_config(f"file://{load}/config.json", cfg)
    spec = local_launch_spec(config=cfg, config_uri=config_uri, load_dir=load, workers=2)
    launcher = LocalLauncher(spec)
    try:
        result = launcher.run()
    finally:
        store.shutdown()
        store.server_close()
    _assert_no_process_left(launcher, str(tmp_path))

    assert result["status"] == "success", result
    assert "all 2 workers ready" in (load / "logs" / "master.log").read_text()
    ts = sorted(float(r["ts"]) for r in _raw_records(load))
    # the 4-s shape, all of it, after the 5-s reads (without the wait: about a second of it)
    assert ts and ts[-1] - ts[0] > 3.0, (len(ts), ts[-1] - ts[0] if ts else None)


def test_stop_mid_run_kills_everything(tmp_path, predict_server):
    cfg, config_uri = _prepare(tmp_path, predict_server.url, load_shape="staircase", users=4,
                               spawn_rate=10, duration_s=120, step_users=2, step_duration_s=30)
    spec = local_launch_spec(config=cfg, config_uri=config_uri, load_dir=tmp_path / "load",
                             workers=1)
    launcher = LocalLauncher(spec)
    out: dict = {}
    runner = threading.Thread(target=lambda: out.update(launcher.run()))
    started = time.monotonic()
    runner.start()
    try:
        while sum(predict_server.counts.values()) < 50 and time.monotonic() - started < 30:
            time.sleep(0.2)
        assert sum(predict_server.counts.values()) >= 50, "the load never started"
    finally:
        launcher.stop()
        runner.join(30)
    assert not runner.is_alive()
    _assert_no_process_left(launcher, str(tmp_path))
    assert time.monotonic() - started < 45
    assert out["status"] == "failed" and out["reason"] == "stopped by request"
    # the stop is clean first: the worker flushed what it had measured before it went
    assert out["request_files"] >= 1 and _raw_records(tmp_path / "load")


def test_bad_config_fails_fast_with_the_reason(tmp_path, predict_server):
    cfg, _ = _prepare(tmp_path, predict_server.url, load_shape="constant", users=1,
                      spawn_rate=1, duration_s=30)
    cfg["protocol"] = "grpc"  # what a hand-edited config could hold
    config_uri = f"file://{tmp_path}/load/bad-config.json"
    (tmp_path / "load" / "bad-config.json").write_text(json.dumps(cfg))
    spec = local_launch_spec(config=cfg, config_uri=config_uri, load_dir=tmp_path / "load",
                             workers=1)
    launcher = LocalLauncher(spec)
    started = time.monotonic()
    result = launcher.run()
    _assert_no_process_left(launcher, str(tmp_path))
    assert time.monotonic() - started < 20
    assert result["status"] == "failed"
    assert result["master_exit_code"] != 0
    assert "config.protocol is 'grpc'" in result["reason"]
    assert sum(predict_server.counts.values()) == 0


def test_worker_failure_is_reported_with_its_reason(tmp_path, predict_server):
    cfg, config_uri = _prepare(tmp_path, predict_server.url, load_shape="constant", users=1,
                               spawn_rate=1, duration_s=30)
    cfg["signature"] = "serving_default"  # the payload only has serving_preprocess
    (tmp_path / "load" / "config.json").write_text(json.dumps(cfg))
    spec = local_launch_spec(config=cfg, config_uri=config_uri, load_dir=tmp_path / "load",
                             workers=1)
    launcher = LocalLauncher(spec, stop_grace_s=2)
    started = time.monotonic()
    result = launcher.run()
    _assert_no_process_left(launcher, str(tmp_path))
    assert time.monotonic() - started < 25
    assert result["status"] == "failed"
    assert result["reason"].startswith("all locust workers exited: ")
    assert "no instances for signature 'serving_default'" in result["reason"]
    assert sum(predict_server.counts.values()) == 0


def test_upload_outputs_copies_locust_files_to_a_remote_load_dir(tmp_path):
    import fsspec

    from caio_operators.loadgen.local import upload_outputs

    (tmp_path / "logs").mkdir()
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust_report.html",
                 "logs/master.log", "logs/worker-0.log"):
        (tmp_path / name).write_text(name)
    spec = launch.build_launch_spec(
        config=launch.make_config(
            test_id="t", predict_url="http://127.0.0.1:1/p", protocol="caip",
            signature="serving_default", payload_uri="memory://b/load/payload.json",
            output_uri="memory://b/load", load_shape="constant", users=1, spawn_rate=1,
            duration_s=5),
        config_uri="memory://b/load/config.json", locust_cmd=["locust"], locustfile="f.py",
        workers=1, csv_prefix=str(tmp_path / "locust"),
        html_path=str(tmp_path / "locust_report.html"), log_dir=str(tmp_path / "logs"))
    assert upload_outputs(spec, f"file://{tmp_path}/elsewhere") == []  # local: nothing to do
    remote = "memory://caio-test-upload/runs/r/load"
    copied = upload_outputs(spec, remote)
    assert len(copied) == 5
    fs = fsspec.filesystem("memory")
    assert fs.cat_file("/caio-test-upload/runs/r/load/logs/worker-0.log") == b"logs/worker-0.log"
    assert fs.cat_file("/caio-test-upload/runs/r/load/locust_stats.csv") == b"locust_stats.csv"
    fs.rm("/caio-test-upload", recursive=True)


def test_peak_progress_lines_for_new_steps_only(tmp_path):
    import json

    from caio_testing import PEAK_SEARCH_REPORT

    from caio_operators.loadgen.local import peak_progress

    path = tmp_path / "search.json"
    uri = f"file://{path}"
    assert peak_progress(uri, 0) == ([], 0)  # not written yet
    running = {**PEAK_SEARCH_REPORT, "status": "running",
               "steps": PEAK_SEARCH_REPORT["steps"][:2]}
    path.write_text(json.dumps(running))
    lines, seen = peak_progress(uri, 0)
    assert seen == 2 and lines == [
        "load: peak search step 0 at 40 req/s passed: 40 req/s, latency 20.0 ms, errors 0.0% "
        "(stable and within the SLO)",
        "load: peak search step 1 at 80 req/s FAILED: 70 req/s, latency 900.0 ms, errors 5.0% "
        "(error rate 5.00% > 1.00% in 3 consecutive windows)"]
    assert peak_progress(uri, 2) == ([], 2)
    path.write_text(json.dumps(PEAK_SEARCH_REPORT))
    lines, seen = peak_progress(uri, 2)
    assert seen == 3 and lines[-1] == ("load: peak search converged: 60.0 req/s sustained "
                                       "(converged: 60/s passes, 80/s fails)")
    path.write_text("{half a fi")
    assert peak_progress(uri, 3) == ([], 3)
