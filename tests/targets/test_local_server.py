"""The local model server for real: 2 replica processes, a tiny TF model, loopback HTTP.

The module shares one deployment (start-up costs seconds); its last test undeploys it.
"""

from __future__ import annotations

import base64
import csv
import http.client
import json
import select
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from targets_helpers import MAX_BODY_BYTES, server_processes, solid_image
from tiny_model import LABELS, expected_logits

from caio_operators.targets import protocols
from caio_operators.targets.records import SAMPLE_COLUMNS, SERVER_RECORD_COLUMNS

RED, GREEN, BLUE = (250, 5, 5), (5, 250, 5), (5, 5, 250)


@pytest.fixture(scope="module")
def session(served):
    with requests.Session() as s:
        yield s


def route(served, protocol: str, version: bool = True) -> str:
    return protocols.predict_url(
        protocol, served["base_url"], project="local", model="tiny",
        version="3" if version else None, location="us-central1", endpoint="42")


ROUTES = [("caip", True), ("vertex", True), ("tfserving", False), ("tfserving", True)]


def images_instances(*values: float) -> tuple[list, np.ndarray]:
    batch = np.stack([np.full((224, 224, 3), v, dtype=np.float32) for v in values])
    batch[:, :, :, 0] += 0.25  # some red in every image
    return batch.tolist(), batch


def assert_json_error(response: requests.Response, status: int, *fragments: str) -> None:
    """A JSON error: TF Serving's {"error": text} or Google's {"error": {"message"...}}."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    text = error["message"] if isinstance(error, dict) else error
    for fragment in fragments:
        assert fragment in text


def assert_still_serving(session, served) -> None:
    response = session.post(route(served, "caip"), json={
        "signature_name": "serving_preprocess",
        "instances": [protocols.b64(solid_image(GREEN))]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["labels"][0] == "green"


# Routes ---------------------------------------------------------------------------------


def test_deployment_describes_the_server(served):
    assert served["target"] == "local" and served["protocol"] == "caip"
    assert served["predict_url"] == (
        f"{served['base_url']}/v1/projects/local/models/tiny/versions/3:predict")
    assert served["base_url"] == f"http://127.0.0.1:{served['port']}"
    assert served["replicas"] == 2 and len(served["replica_pids"]) == 2
    assert {p.pid for p in server_processes(served["pid"])} == {
        served["pid"], *served["replica_pids"]}


def test_health_route(session, served):
    response = session.get(served["health_url"])
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["model"] == "tiny" and body["version"] == "3"
    assert body["signatures"] == ["serving_default", "serving_preprocess"]
    assert response.headers["X-Caio-Replica"] in ("0", "1")


def test_tfserving_model_status(session, served):
    for path in ("/v1/models/tiny", "/v1/models/tiny/versions/3"):
        response = session.get(served["base_url"] + path)
        assert response.status_code == 200
        status = response.json()["model_version_status"][0]
        assert status["state"] == "AVAILABLE" and status["version"] == "3"
    assert_json_error(session.get(served["base_url"] + "/v1/models/other"), 404, "tiny")


@pytest.mark.parametrize(("protocol", "version"), ROUTES)
def test_serving_default_on_every_route(session, served, protocol, version):
    instances, batch = images_instances(0.0, 0.5)
    body = {"instances": instances}
    if protocol != "vertex":
        body["signature_name"] = "serving_default"
    response = session.post(route(served, protocol, version), json=body)
    assert response.status_code == 200, response.text
    logits = np.array(response.json()["predictions"])  # one output: bare rows
    assert logits.shape == (2, 10)
    np.testing.assert_allclose(logits, expected_logits(batch), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("protocol", "version"), ROUTES)
def test_serving_preprocess_on_every_route(session, served, protocol, version):
    images = [solid_image(RED), solid_image(GREEN, "PNG"), solid_image(BLUE, size=(300, 200))]
    url = route(served, protocol, version)
    if protocol == "vertex":  # its :predict takes no signature_name; :rawPredict passes it
        url = url.replace(":predict", ":rawPredict")
    response = session.post(url, json=protocols.predict_body(
        [protocols.b64(image) for image in images], "serving_preprocess"))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]  # several outputs: a dict per instance
    assert [p["labels"][0] for p in predictions] == ["red", "green", "blue"]
    for p in predictions:
        assert len(p["labels"]) == 5 and set(p["labels"]) <= set(LABELS)
        assert p["probabilities"] == sorted(p["probabilities"], reverse=True)
        assert 0 < sum(p["probabilities"]) <= 1.0001


def test_named_inputs_and_plain_string_b64(session, served):
    response = session.post(route(served, "tfserving"), json={
        "signature_name": "serving_preprocess",
        "instances": [{"image_bytes": protocols.b64(solid_image(BLUE))}]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["labels"][0] == "blue"


def test_openapi_description(session, served):
    response = session.get(served["base_url"] + "/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/models/{model}:predict", "/healthz", "/v1/models/{model}/metadata",
            "/v1/projects/{project}/models/{model}/versions/{version}:predict",
            "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict",
            "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:rawPredict",
            } <= set(document["paths"])
    request = document["components"]["schemas"]["PredictRequest"]
    assert request["properties"]["signature_name"]["enum"] == [
        "serving_default", "serving_preprocess"]


# Bad input ------------------------------------------------------------------------------

NOT_AN_IMAGE = base64.b64encode(b"this is not an image").decode()
BAD_REQUESTS = [
    ("malformed json", b'{"instances": [', 400, ["not valid JSON"]),
    ("not an object", b"[1, 2]", 400, ["JSON object"]),
    ("missing instances", b'{"signature_name": "serving_default"}', 400, ["instances"]),
    ("instances not a list", b'{"instances": 3}', 400, ["must be a list"]),
    ("empty instances", b'{"instances": []}', 400, ["empty"]),
    ("wrong types", json.dumps({"instances": [[["a"] * 3] * 224] * 224}).encode(), 400,
     ["non-numbers"]),
    ("shape mismatch", json.dumps({"instances": [[[[0.0] * 3] * 10] * 10]}).encode(), 400,
     ["[None, 224, 224, 3]", "[1, 10, 10, 3]"]),
    ("string for float input", b'{"instances": [{"b64": "AAAA"}]}', 400, ["images"]),
    ("bad base64", b'{"signature_name": "serving_preprocess", "instances": [{"b64": "@@"}]}',
     400, ["base64"]),
    ("not an image", json.dumps({"signature_name": "serving_preprocess",
                                 "instances": [{"b64": NOT_AN_IMAGE}]}).encode(), 400,
     ["rejected", "image"]),
    ("unknown signature", b'{"signature_name": "nope", "instances": [1]}', 400,
     ["nope", "serving_default, serving_preprocess"]),
    ("signature not a string", b'{"signature_name": 7, "instances": [1]}', 400,
     ["signature_name"]),
]


@pytest.mark.parametrize(("case", "body", "status", "fragments"), BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_4xx_json_and_server_keeps_serving(
        session, served, case, body, status, fragments):
    # TF Serving's route answers every failure with its HTTP status (the other protocols'
    # shapes: test_google_clients.py)
    response = session.post(route(served, "tfserving"), data=body,
                            headers={"Content-Type": "application/json"})
    assert_json_error(response, status, *fragments)
    assert_still_serving(session, served)


def test_unknown_route_wrong_model_and_method(session, served):
    assert_json_error(session.post(served["base_url"] + "/v2/whatever", data=b"{}"), 404,
                      "no route")
    wrong_model = protocols.predict_url("caip", served["base_url"], "local", "other", "3")
    assert_json_error(session.post(wrong_model, data=b'{"instances": [1]}'), 404,
                      "'other'", "'tiny'")
    wrong_version = protocols.predict_url("tfserving", served["base_url"], model="tiny",
                                          version="9")
    assert_json_error(session.post(wrong_version, data=b'{"instances": [1]}'), 404, "'9'")
    response = session.get(served["predict_url"])
    assert_json_error(response, 405, "POST")
    assert response.headers["Allow"] == "POST"
    assert_still_serving(session, served)


def test_body_over_the_limit_gets_413(session, served):
    big = b'{"instances": [' + b"0," * (MAX_BODY_BYTES // 2) + b"0]}"
    assert_json_error(session.post(served["predict_url"], data=big), 413,
                      str(MAX_BODY_BYTES), "--max-body-bytes")
    assert_still_serving(session, served)


def test_a_client_still_sending_reads_its_413(served):
    """A body too big even to drain is refused before it is read; the client goes on
    sending it, and still reads the 413 (lingering close: closing with the client's bytes
    unread would reset the connection and throw the answer away)."""
    path = served["predict_url"].split(str(served["port"]), 1)[1]
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {2**30}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", served["port"]), timeout=10) as sock:
        sock.sendall(head + b"0" * 2**18)
        assert select.select([sock], [], [], 10)[0], "no answer within 10 s"
        sock.sendall(b"0" * 2**16)  # still sending after the answer arrived
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"Connection: close" in answer and b"--max-body-bytes" in answer


def raw_exchange(served, request: bytes) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", served["port"]), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += sock.recv(65536)
    return int(head.split()[1]), json.loads(rest)


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: x1\r\n\r\n", 400),
    (b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n", 400),
    (b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    (b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n\r\n", 411),
    (b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 501),
], ids=["garbage request line", "bad content-length", "non-ascii digit length", "chunked",
        "no content-length", "unknown method"])
def test_broken_http_gets_json_error(session, served, request_bytes, status):
    code, body = raw_exchange(served, request_bytes)
    assert code == status and body["error"]
    assert_still_serving(session, served)


# Replicas, records, samples ---------------------------------------------------------------


def test_every_replica_serves(served):
    ready = json.loads(Path(served["ready_file"]).read_text())
    for index, port in enumerate(ready["replica_admin_ports"]):
        response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert response.json()["replica"] == index
    # Connections held open together: each goes to the replica holding fewer connections.
    sessions = [requests.Session() for _ in range(4)]
    try:
        seen = {s.get(served["health_url"], timeout=10).headers["X-Caio-Replica"]
                for s in sessions}
    finally:
        for s in sessions:
            s.close()
    assert seen == {"0", "1"}


def test_keep_alive_connection_is_reused(served):
    conn = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=10)
    body = json.dumps(protocols.predict_body([protocols.b64(solid_image(RED))],
                                             "serving_preprocess"))
    path = served["predict_url"].removeprefix(served["base_url"])
    ports = set()
    for _ in range(5):
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        response.read()
        ports.add(conn.sock.getsockname()[1])
    conn.close()
    assert len(ports) == 1  # one TCP connection for all five requests


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def read_csvs(directory: Path) -> tuple[list[tuple], list[dict]]:
    headers, rows = [], []
    for path in sorted(directory.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            headers.append(tuple(reader.fieldnames))
            rows.extend(reader)
    return headers, rows


def test_requests_are_recorded(session, served):
    instances, _ = images_instances(0.5)
    assert session.post(served["predict_url"], json={"instances": instances}).ok
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    bad = session.post(served["predict_url"], json={"signature_name": marker, "instances": [1]})
    # AI Platform's route: a failed prediction is a 200 with the reason, and a failure
    assert bad.status_code == 200 and bad.json()["error"].startswith("Prediction failed: ")
    assert_still_serving(session, served)
    records_dir = Path(served["records_dir"])
    deadline = time.monotonic() + 10
    while True:
        headers, rows = read_csvs(records_dir)
        if any(r["signature"] == marker for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert rows and set(headers) == {SERVER_RECORD_COLUMNS}
    names = {p.name.rsplit("-", 1)[0] for p in records_dir.glob("*.csv")}
    assert names <= {"replica-0", "replica-1"}
    marked = [r for r in rows if r["signature"] == marker]
    assert len(marked) == 1
    assert marked[0]["status_code"] == "200" and marked[0]["ok"] == "0"
    assert marked[0]["instances"] == "1" and marker in marked[0]["error"]
    good = [r for r in rows if r["status_code"] == "200" and r["signature"] != marker]
    assert {r["signature"] for r in good} >= {"serving_default", "serving_preprocess"}
    assert all(r["ok"] == "1" and float(r["latency_ms"]) > 0 and not r["error"] for r in good)
    # the model's share of the latency; the rest is the server's own overhead
    assert all(0 < float(r["model_ms"]) <= float(r["latency_ms"]) for r in good)
    assert {r["queue_ms"] for r in good} == {"0.000"}  # no batching here
    assert marked[0]["model_ms"] == marked[0]["queue_ms"] == ""
    assert {r["replica"] for r in rows} <= {"0", "1"}
    now = time.time()
    assert all(now - 600 < float(r["ts"]) <= now for r in rows)
    assert not any(r["signature"] == "" and r["status_code"] == "200" for r in rows), \
        "health probes must not be recorded"


def test_replicas_are_sampled(served):
    samples_dir = Path(served["samples_dir"])
    deadline = time.monotonic() + 10
    while not list(samples_dir.glob("samples-*.csv")) and time.monotonic() < deadline:
        time.sleep(0.3)
    headers, rows = read_csvs(samples_dir)
    assert rows and set(headers) == {SAMPLE_COLUMNS}
    pids = dict(enumerate(served["replica_pids"]))
    assert {int(r["replica"]) for r in rows} == {0, 1}
    for r in rows:
        assert int(r["pid"]) == pids[int(r["replica"])]
        assert float(r["cpu_percent"]) >= 0 and float(r["rss_mb"]) > 10


def test_throughput_on_one_connection(served):
    """Not a timed assertion: prints the rate for the report."""
    conn = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=10)
    path = served["predict_url"].removeprefix(served["base_url"])
    body = json.dumps(protocols.predict_body([protocols.b64(solid_image(RED))],
                                             "serving_preprocess"))
    started, count = time.perf_counter(), 50
    for _ in range(count):
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    elapsed = time.perf_counter() - started
    conn.close()
    print(f"\nserving_preprocess, 1 image, 1 connection: {count / elapsed:.0f} req/s, "
          f"{elapsed / count * 1000:.1f} ms/request")


# Faults and teardown (last: they take the module's deployment down) -------------------------


def test_a_dead_replica_leaves_the_other_serving(session, served):
    psutil.Process(served["replica_pids"][0]).kill()
    log_path = Path(served["log_path"])
    assert wait_until(lambda: "replica 0" in log_path.read_text()
                      and "keep serving" in log_path.read_text(), 5)
    body = protocols.predict_body([protocols.b64(solid_image(RED))], "serving_preprocess")
    for _ in range(10):  # fresh connections: all land on the survivor
        response = requests.post(served["predict_url"], json=body, timeout=10,
                                 headers={"Connection": "close"})
        assert response.status_code == 200
        assert response.headers["X-Caio-Replica"] == "1"
    assert psutil.pid_exists(served["pid"])


def test_undeploy_stops_everything_and_is_idempotent(served):
    from caio_operators.targets.local import LocalTarget

    pids = [served["pid"], *served["replica_pids"]]
    LocalTarget().undeploy(served)
    assert not server_processes(served["pid"])
    assert not [p for p in pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    LocalTarget().undeploy(served)  # already gone: still fine
    assert not Path(served["ready_file"]).exists()
    # The replicas flushed their records on the way out.
    assert list(Path(served["records_dir"]).glob("replica-*.csv"))
    with pytest.raises(requests.ConnectionError):
        requests.get(served["health_url"], timeout=5)
