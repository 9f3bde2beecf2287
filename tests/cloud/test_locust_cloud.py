"""The locustfile's cloud additions: Cloud Logging entries (the log-based metrics' contract)
and the publication of Locust's own files at exit.

The pure half (``locust/caio_load.py``) is imported by path and checked with literal values
and the real ``WriteLogEntriesRequest`` type. One real standalone Locust process then runs
against a loopback server with a fake ``LoggingServiceV2Client`` injected where the
locustfile makes its client (``caio_load.make_logging_client``), and ``CAIO_PUBLISH_URI``
pointing at a local folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType

import pytest
from caio_testing import LOCUST_DIR, load_locust_module

LOCUSTFILE = LOCUST_DIR / "locustfile.py"
PREDICT_PATH = "/v1/projects/p/models/m/versions/v1:predict"


@pytest.fixture(scope="module")
def cl() -> ModuleType:
    load_locust_module("shapes")
    return load_locust_module("caio_load")


BASE = {
    "test_id": "run-1", "project_id": "proj-1", "model": "tiny", "version": "v1",
    "protocol": "caip", "predict_url": "http://127.0.0.1:9" + PREDICT_PATH,
    "signature": "serving_preprocess", "payload_uri": "file:///x/payload.json",
    "output_uri": "file:///x/load",
    "shape": {"kind": "constant", "users": 2, "spawn_rate": 2, "duration_s": 5},
}


def test_payloads_follow_the_log_metrics_contract(cl):
    payloads = cl.log_payloads(test_id="run-1", model="tiny", user_count=8, stats=[
        ("serving_preprocess", 123.4567, 1000, 3), ("serving_default", None, 0, 0)])
    assert payloads == [
        {"test_id": "run-1", "signature": "serving_preprocess", "model": "tiny",
         "latency": 123.457, "user_count": 8, "num_requests": 1000, "num_failures": 3},
        # no latency yet: left out, so the latency metric records no fake zero
        {"test_id": "run-1", "signature": "serving_default", "model": "tiny",
         "user_count": 8, "num_requests": 0, "num_failures": 0},
    ]
    # every field the log-based metrics extract is in the payload
    from caio_operators.metrics.log_metrics import LABELS, LOG_METRICS

    assert {d.json_field for d in LOG_METRICS} | set(LABELS) <= set(payloads[0])
    assert cl.signature_of("predict:serving_default") == "serving_default"
    assert cl.signature_of("Aggregated") is None


def test_one_batch_is_a_valid_write_log_entries_request(cl):
    from google.cloud.logging_v2.types import WriteLogEntriesRequest

    from caio_operators.metrics.log_metrics import log_filter, log_name

    payloads = cl.log_payloads(test_id="run-1", model="tiny", user_count=2,
                               stats=[("serving_preprocess", 10.0, 5, 0),
                                      ("serving_default", 20.0, 7, 1)])
    request = cl.log_entries_request("proj-1", "locust", payloads)
    message = WriteLogEntriesRequest(request)  # the real type: unknown fields raise
    assert message.log_name == log_name("proj-1")  # where the log-based metrics look
    assert 'logName="projects/proj-1/logs/locust"' in log_filter("proj-1", "latency")
    assert (message.resource.type, dict(message.resource.labels)) == (
        "global", {"project_id": "proj-1"})
    assert len(message.entries) == 2
    first = message.entries[0]
    assert dict(first.json_payload) == {
        "test_id": "run-1", "signature": "serving_preprocess", "model": "tiny",
        "latency": 10.0, "user_count": 2.0, "num_requests": 5.0, "num_failures": 0.0}


@pytest.mark.parametrize(("cloud_logging", "message"), [
    ({"log_name": "locust"}, "cloud_logging.project is None"),
    ({"project": "Bad Project"}, "cloud_logging.project is 'Bad Project'"),
    ({"project": "proj-1", "log_name": "a/b"}, "cloud_logging.log_name is 'a/b'"),
    ({"project": "proj-1", "interval_s": 0.1}, "cloud_logging.interval_s is 0.1"),
    ("proj-1", "must be an object"),
])
def test_cloud_logging_config_names_the_bad_field(cl, cloud_logging, message):
    with pytest.raises(cl.ConfigError, match=message):
        cl.parse_config({**BASE, "cloud_logging": cloud_logging})


def test_cloud_logging_config_defaults(cl):
    cfg = cl.parse_config({**BASE, "cloud_logging": {"project": "proj-1"}})
    assert cfg["cloud_logging"] == {"project": "proj-1", "log_name": "locust",
                                    "interval_s": 5.0}
    assert "cloud_logging" not in cl.parse_config(BASE)


def test_publish_outputs_copies_what_locust_wrote(cl, tmp_path):
    run = tmp_path / "pod"
    run.mkdir()
    (run / "locust_stats.csv").write_text("a,b\n1,2\n")
    (run / "locust_stats_history.csv").write_text("h\n")
    (run / "locust_report.html").write_text("<html></html>")
    target = f"file://{tmp_path}/bucket/runs/r/load"

    written = cl.publish_outputs(target, str(run / "locust"), str(run / "locust_report.html"))

    assert written == [f"{target}/locust_stats.csv", f"{target}/locust_stats_history.csv",
                       f"{target}/locust_report.html"]  # no _failures.csv: none written
    assert (tmp_path / "bucket/runs/r/load/locust_stats.csv").read_text() == "a,b\n1,2\n"


# ---------------------------------------------------------------- a real Locust process

class _Predict(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        data = b'{"predictions": [[0.5, 0.5]]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# Runs Locust's own main() after swapping the client factory for a fake that appends each
# request to a JSON-lines file (the locustfile imports this very caio_load module).
DRIVER = """
import json, sys
import locust  # gevent's monkey patching first, as `locust` does
sys.path.insert(0, sys.argv[1])
import caio_load

ENTRIES = sys.argv[2]  # read now: sys.argv is Locust's below

class FakeLoggingClient:
    def write_log_entries(self, request, timeout=None):
        with open(ENTRIES, "a") as out:
            out.write(json.dumps({"request": request, "timeout": timeout}) + "\\n")

caio_load.make_logging_client = FakeLoggingClient
from locust.main import main
sys.argv = ["locust", *sys.argv[3:]]
main()
"""


def test_standalone_run_writes_log_entries_and_publishes_its_files(tmp_path):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Predict)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}{PREDICT_PATH}"
        (tmp_path / "payload.json").write_text(json.dumps(
            [{"signature": "serving_preprocess", "instances": [{"b64": "aGk="}]}]))
        config = {**BASE, "predict_url": url, "payload_uri": str(tmp_path / "payload.json"),
                  "output_uri": f"file://{tmp_path}/load", "flush_interval_s": 1,
                  "shape": {"kind": "constant", "users": 2, "spawn_rate": 10, "duration_s": 4},
                  "think_time_s": 0.05,
                  "cloud_logging": {"project": "proj-1", "log_name": "locust",
                                    "interval_s": 1}}
        (tmp_path / "config.json").write_text(json.dumps(config))
        entries = tmp_path / "entries.jsonl"
        work = tmp_path / "pod"
        env = {"CAIO_PUBLISH_URI": f"file://{tmp_path}/published", "PYTHONUNBUFFERED": "1",
               "PATH": "/usr/bin:/bin"}
        import os

        env = {**os.environ, **env}
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, str(LOCUST_DIR), str(entries),
             "-f", str(LOCUSTFILE), "--headless", "--csv", str(work / "locust"),
             "--csv-full-history", "--html", str(work / "locust_report.html"),
             "--caio-config", str(tmp_path / "config.json"), "--loglevel", "INFO"],
            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    finally:
        httpd.shutdown()
        httpd.server_close()
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]

    # Cloud Logging: about one batch a second while users ran, one entry per signature
    assert entries.exists(), "\n".join(line for line in log.splitlines() if "caio" in line)
    requests = [json.loads(line) for line in entries.read_text().splitlines()]
    assert 2 <= len(requests) <= 6, log[-3000:]
    from google.cloud.logging_v2.types import WriteLogEntriesRequest

    for item in requests:
        WriteLogEntriesRequest(item["request"])
        assert item["request"]["log_name"] == "projects/proj-1/logs/locust"
        assert [e["json_payload"]["signature"] for e in item["request"]["entries"]] == [
            "serving_preprocess"]
    last = requests[-1]["request"]["entries"][0]["json_payload"]
    assert last["test_id"] == "run-1" and last["model"] == "tiny"
    assert last["user_count"] == 2 and last["num_failures"] == 0
    assert last["num_requests"] > 0 and last["latency"] > 0
    counts = [r["request"]["entries"][0]["json_payload"]["num_requests"] for r in requests]
    assert counts == sorted(counts)  # totals since the start

    # Locust's own files, published at exit as written (CSV closed, HTML written)
    published = tmp_path / "published"
    names = sorted(p.name for p in published.iterdir())
    assert names == ["locust_exceptions.csv", "locust_failures.csv", "locust_report.html",
                     "locust_stats.csv", "locust_stats_history.csv"], log[-3000:]
    for name in names:
        assert (published / name).read_bytes() == (work / name).read_bytes()
    stats = (published / "locust_stats.csv").read_text()
    assert "predict:serving_preprocess" in stats and "Aggregated" in stats
    assert "caio: published 5 Locust files" in log
