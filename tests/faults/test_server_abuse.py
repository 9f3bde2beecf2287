"""Bad input and abuse of the local model server: slow clients, fuzzed requests, big
bodies, each against a real 2-replica server of the exported tiny model.

Every answer to a bad request is a 4xx JSON error, and the server keeps answering a
well-behaved client meanwhile. (The catalogue of malformed bodies is in
tests/targets/test_local_server.py; these are the cases it does not cover.)
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time

import pytest
import requests
from faults_helpers import IMAGES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caio_operators.targets.local import LocalTarget

pytestmark = [pytest.mark.faults, pytest.mark.slow]

MAX_BODY = 2**20
# the slow clients' cut-off: shorter than the default 30 s so the test takes seconds, long
# enough that a trickling head or body (a byte a second) cannot finish within it
REQUEST_TIMEOUT_S = 8.0
IMAGE = base64.b64encode((IMAGES / "shapes_320x240.jpg").read_bytes()).decode()


@pytest.fixture(scope="module")
def server(tiny_export, tmp_path_factory):
    target = LocalTarget()
    deployment = target.deploy(
        model_uri=str(tiny_export), model_name="tiny", model_version="v1", replicas=2,
        server_dir=str(tmp_path_factory.mktemp("server")), max_body_bytes=MAX_BODY,
        request_timeout_s=REQUEST_TIMEOUT_S, max_lifetime_s=900, startup_timeout_s=240)
    yield deployment
    target.undeploy(deployment)


def good_request(server, timeout_s: float = 10.0) -> requests.Response:
    body = {"signature_name": "serving_preprocess", "instances": [{"b64": IMAGE}]}
    response = requests.post(server["predict_url"], json=body, timeout=timeout_s)
    assert response.status_code == 200, response.text[:300]
    return response


def assert_json_4xx(response: requests.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert "error" in response.json()


def _slow_client(server, head: bytes, stop: threading.Event, out: list) -> None:
    """Send ``head`` one byte a second until the server answers or closes."""
    with socket.create_connection((server["host"], server["port"]), timeout=120) as sock:
        started = time.monotonic()
        try:
            for byte in head:
                if stop.is_set():
                    return
                sock.sendall(bytes([byte]))
                ready = socket.socket.recv(sock, 65536, socket.MSG_DONTWAIT) \
                    if _readable(sock) else None
                if ready is not None:
                    out.append((time.monotonic() - started, ready))
                    return
                time.sleep(1.0)
            out.append((time.monotonic() - started, sock.recv(65536)))
        except OSError as exc:
            out.append((time.monotonic() - started, exc))


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


@pytest.mark.parametrize("phase", ["head", "body"])
def test_slow_clients_do_not_hold_up_the_others_and_get_408(server, phase):
    """Slowloris: 40 connections trickling their request a byte a second. The server keeps
    answering a normal client, and cuts each slow one off with a 408 JSON error."""
    path = server["predict_url"].split(str(server["port"]), 1)[1]
    if phase == "head":
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\n" + "X-Pad: a\r\n" * 40).encode()
    else:
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
                ).encode() + b" " * 500
    stop, answers = threading.Event(), []
    slow = [threading.Thread(target=_slow_client, args=(server, head, stop, answers),
                             daemon=True) for _ in range(40)]
    for thread in slow:
        thread.start()
    time.sleep(2.0)
    try:
        for _ in range(20):  # meanwhile a normal client is served at once, every time
            good_request(server, timeout_s=10)
        for thread in slow:
            thread.join(timeout=120)
    finally:
        stop.set()
    assert len(answers) == 40
    for elapsed, answer in answers:
        assert isinstance(answer, bytes), answer
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"error"' in answer and REQUEST_TIMEOUT_S <= elapsed < 60
        assert f"within {REQUEST_TIMEOUT_S:g} s".encode() in answer
    good_request(server)


def test_oversized_bodies_get_413_fast(server):
    big = b'{"instances": ["' + b"x" * (MAX_BODY + 10) + b'"]}'
    response = requests.post(server["predict_url"], data=big, timeout=30)
    # AI Platform's route: Google's error shape
    assert response.status_code == 413 and "limit" in response.json()["error"]["message"]
    # a claimed length far over the limit is refused before the body is sent
    with socket.create_connection((server["host"], server["port"]), timeout=30) as sock:
        path = server["predict_url"].split(str(server["port"]), 1)[1]
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**12}\r\n"
                     "\r\n".encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"error"' in answer
    good_request(server)


def _doc(server) -> dict:
    return requests.get(server["base_url"] + "/openapi.json", timeout=10).json()


_SEGMENT = st.text(alphabet=st.characters(codec="ascii", exclude_characters="/?#"),
                   min_size=0, max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
_INSTANCE = st.one_of(
    _JSON,
    st.fixed_dictionaries({"b64": st.one_of(st.text(max_size=30),
                                            st.binary(max_size=60).map(
                                                lambda b: base64.b64encode(b).decode()))}),
    st.just({"b64": IMAGE}))
_PREDICT = st.fixed_dictionaries(
    {"instances": st.one_of(st.lists(_INSTANCE, max_size=3), _JSON)},
    optional={"signature_name": st.one_of(st.sampled_from(["serving_default",
                                                           "serving_preprocess"]), _JSON),
              "inputs": _JSON, "parameters": _JSON})


@st.composite
def requests_from_the_openapi_doc(draw, doc: dict, served: dict) -> tuple[str, str, bytes]:
    """(method, path, body) for a route of the server's own OpenAPI description, with its
    path parameters either the served names or fuzz, and a fuzzed JSON or byte body."""
    template = draw(st.sampled_from(sorted(doc["paths"])))
    method = draw(st.sampled_from(sorted(doc["paths"][template]))).upper()
    method = draw(st.sampled_from([method, method, "GET", "PUT", "DELETE"]))

    def fill(match: re.Match) -> str:
        known = {"model": "tiny", "version": "v1"}.get(match.group(1), "p")
        return draw(st.one_of(st.just(known), _SEGMENT))

    path = re.sub(r"\{(\w+)\}", fill, template)
    body = draw(st.one_of(_PREDICT.map(lambda d: json.dumps(d).encode()),
                          _JSON.map(lambda d: json.dumps(d).encode()), st.binary(max_size=200)))
    return method, path, body


def test_fuzzed_requests_from_the_openapi_doc_get_no_5xx(server):
    doc = _doc(server)
    session = requests.Session()
    seen = set()

    @settings(max_examples=250, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(request=requests_from_the_openapi_doc(doc, server))
    def check(request):
        method, path, body = request
        response = session.request(method, server["base_url"] + path, data=body, timeout=30)
        seen.add(response.status_code)
        assert response.status_code < 500, (method, path, body[:200], response.text[:300])
        if response.status_code >= 400:
            assert_json_4xx(response)

    check()
    assert seen & {400, 404} and 200 in seen  # the fuzz reached both answers and errors
    good_request(server)
    assert requests.get(server["health_url"], timeout=10).json()["status"] == "ok"


def test_every_server_socket_listens_on_loopback_only(server):
    import psutil

    listening = []
    for pid in (server["pid"], *server["replica_pids"]):
        listening += [c.laddr for c in psutil.Process(pid).net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
    assert len(listening) >= 3  # the server port and each replica's admin port
    assert {addr.ip for addr in listening} == {"127.0.0.1"}
    assert server["host"] == "127.0.0.1"
