"""The locustfile's plain half (locust/caio_load.py): config, bodies, failures, raw records;
and the locustfile's import boundary."""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

LOCUST_DIR = Path(__file__).resolve().parents[2] / "locust"
LOCUSTFILE = LOCUST_DIR / "locustfile.py"

CONFIG = {
    "test_id": "t1", "project_id": "p", "model": "m", "version": "v1", "protocol": "caip",
    "predict_url": "http://127.0.0.1:9/v1/projects/p/models/m/versions/v1:predict",
    "signature": "serving_preprocess", "payload_uri": "file:///x/payload.json",
    "output_uri": "file:///x/load",
    "shape": {"kind": "constant", "users": 2, "spawn_rate": 2, "duration_s": 5},
}


def test_parse_config_fills_defaults(caio_load_mod):
    cfg = caio_load_mod.parse_config(CONFIG)
    assert cfg["think_time_s"] == 0.0
    assert cfg["flush_interval_s"] == 5.0
    assert cfg["request_timeout_s"] == 30.0
    assert cfg["instances_per_request"] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"protocol": "grpc"}, "config.protocol is 'grpc'; use one of caip, vertex, tfserving"),
        ({"signature": "x"}, "config.signature is 'x'"),
        ({"predict_url": "127.0.0.1:8000/predict"}, "must be an absolute http"),
        ({"payload_uri": ""}, "config.payload_uri is missing"),
        ({"shape": {"kind": "constant", "users": 0, "spawn_rate": 1, "duration_s": 5}},
         "config.shape.users is 0"),
        ({"shape": None}, "config.shape is missing"),
        ({"think_time_s": -1}, "config.think_time_s is -1"),
        ({"instances_per_request": 0}, "config.instances_per_request is 0"),
    ],
)
def test_parse_config_names_the_bad_field(caio_load_mod, change, message):
    with pytest.raises(caio_load_mod.ConfigError, match=message):
        caio_load_mod.parse_config({**CONFIG, **change})


def test_load_config_reads_path_and_file_uri(caio_load_mod, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    assert caio_load_mod.load_config(str(path))["test_id"] == "t1"
    assert caio_load_mod.load_config(f"file://{path}")["test_id"] == "t1"
    with pytest.raises(caio_load_mod.ConfigError, match="does not exist"):
        caio_load_mod.load_config(str(tmp_path / "missing.json"))
    path.write_text("{not json")
    with pytest.raises(caio_load_mod.ConfigError, match="not valid JSON"):
        caio_load_mod.load_config(str(path))


def test_request_bodies_cycle_instances_of_the_signature(caio_load_mod):
    payload = [
        {"signature": "serving_preprocess", "instances": [{"b64": "A"}, {"b64": "B"}]},
        {"signature": "serving_default", "instances": [[[0.5]]]},
        {"signature": "serving_preprocess", "instances": [{"b64": "C"}]},
    ]
    cfg = caio_load_mod.parse_config({**CONFIG, "instances_per_request": 2})
    bodies = [json.loads(b) for b in caio_load_mod.request_bodies(cfg, payload)]
    assert bodies == [
        {"signature_name": "serving_preprocess", "instances": [{"b64": "A"}, {"b64": "B"}]},
        {"signature_name": "serving_preprocess", "instances": [{"b64": "C"}, {"b64": "A"}]},
    ]
    with pytest.raises(caio_load_mod.ConfigError, match="no instances for signature"):
        caio_load_mod.request_bodies({**cfg, "signature": "serving_default"}, payload[:1])


def test_request_body_per_protocol(caio_load_mod):
    body = caio_load_mod.request_body
    assert body("caip", "s", [1], "https://ml.googleapis.com/v1/x:predict") == {
        "signature_name": "s", "instances": [1]}
    assert body("tfserving", "s", [1], "http://h/v1/models/m:predict") == {
        "signature_name": "s", "instances": [1]}
    assert body("vertex", "s", [1], "https://r-aiplatform.googleapis.com/v1/e:predict") == {
        "instances": [1]}
    assert body("vertex", "s", [1], "https://r-aiplatform.googleapis.com/v1/e:rawPredict") == {
        "signature_name": "s", "instances": [1]}


def test_chunk_cyclic(caio_load_mod):
    assert caio_load_mod.chunk_cyclic([1, 2, 3], 1) == [[1], [2], [3]]
    assert caio_load_mod.chunk_cyclic([1, 2, 3], 2) == [[1, 2], [3, 1]]
    assert caio_load_mod.chunk_cyclic([1], 3) == [[1, 1, 1]]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b'{"predictions": [{"error_rate": 1}]}', None),
        (200, b'{"predictions": [1, 2]}', None),
        (200, b'{"error": "Prediction failed"}', "error in 200 response: Prediction failed"),
        (200, b'{"error": {"code": 3}}', 'error in 200 response: {"code":3}'),
        (500, b'{"error": "boom"}', 'HTTP 500: {"error": "boom"}'),
        (429, b"", "HTTP 429"),
        (204, b"", None),
    ],
)
def test_response_error(caio_load_mod, status, body, expected):
    assert caio_load_mod.response_error(status, body) == expected


def test_needs_google_auth_and_origin(caio_load_mod):
    assert caio_load_mod.needs_google_auth("https://ml.googleapis.com/v1/p:predict")
    assert caio_load_mod.needs_google_auth("https://europe-west1-aiplatform.googleapis.com/v1")
    assert not caio_load_mod.needs_google_auth("http://127.0.0.1:8080/v1/models/m:predict")
    assert not caio_load_mod.needs_google_auth("https://evilgoogleapis.com/x")
    assert caio_load_mod.origin("http://127.0.0.1:8080/v1/m:predict") == "http://127.0.0.1:8080"


def test_refresh_delay(caio_load_mod):
    now = dt.datetime(2025, 1, 1, 12, 0, 0)
    delay = caio_load_mod.refresh_delay_s
    assert delay(now + dt.timedelta(minutes=60), now) == 3000.0  # capped
    assert delay(now + dt.timedelta(minutes=20), now) == 900.0  # 5 minutes early
    assert delay(now + dt.timedelta(minutes=2), now) == 30.0  # at least 30 s apart
    assert delay(None, now) == 30.0


def test_record_buffer_writes_one_whole_file_per_flush(caio_load_mod, tmp_path):
    buf = caio_load_mod.RecordBuffer(f"file://{tmp_path}", "host-42")
    assert buf.flush() is None  # nothing buffered: no empty files
    buf.add(1700000000.5, 12.3456, True, 200, "serving_default", 120, None)
    buf.add(1700000001.0, 3.0, False, 500, "serving_default", 17, 'HTTP 500: {"a": "b,c"}')
    first = buf.flush()
    buf.add(1700000002.0, 4.0, False, 0, "serving_default", 0, "ConnectionRefusedError: x")
    second = buf.flush()
    assert first.endswith("/requests/worker-host-42-000000.csv")
    assert second.endswith("/requests/worker-host-42-000001.csv")
    files = sorted((tmp_path / "requests").iterdir())
    assert [f.name for f in files] == ["worker-host-42-000000.csv", "worker-host-42-000001.csv"]
    with files[0].open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["ts", "latency_ms", "ok", "status_code", "signature", "worker",
                             "bytes", "error"]
    assert rows[0] == {"ts": "1700000000.500000", "latency_ms": "12.346", "ok": "1",
                       "status_code": "200", "signature": "serving_default",
                       "worker": "host-42", "bytes": "120", "error": ""}
    assert rows[1]["error"] == 'HTTP 500: {"a": "b,c"}'
    assert buf.written == 3 and buf.seq == 2


def test_record_buffer_keeps_rows_when_a_write_fails(caio_load_mod, tmp_path):
    blocker = tmp_path / "load"
    blocker.write_text("a file where the folder should be")
    buf = caio_load_mod.RecordBuffer(f"file://{blocker}", "w")
    buf.add(1.0, 2.0, True, 200, "s", 1, None)
    with pytest.raises(OSError):
        buf.flush()
    assert len(buf.rows) == 1 and buf.seq == 0


def test_helpers_do_not_import_locust_or_gevent():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import caio_load, shapes, caio_hdr, caio_schedule, caio_cpu; "
        "bad = [m for m in ('locust', 'gevent', 'google.cloud.storage') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(LOCUST_DIR)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_locustfile_is_standalone():
    """Locust's own loader imports the locustfile without Airflow, TF or caio_operators."""
    code = (
        "import sys\n"
        "from locust.util.load_locustfile import load_locustfile\n"
        "users, shapes = load_locustfile(sys.argv[1])\n"
        "print(sorted(users), [type(s).__name__ for s in shapes])\n"
        "bad = [m for m in ('airflow', 'tensorflow', 'caio_operators', 'google.auth',\n"
        "                   'google.cloud.storage') if m in sys.modules]\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(LOCUSTFILE)],
                          capture_output=True, text=True, timeout=60, cwd=LOCUST_DIR.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "['OpenRateUser', 'PredictUser'] ['ConfigShape']" in done.stdout
