"""Fixtures for the load-generation tests: the locust/ helper modules loaded by path, and a
real loopback HTTP server speaking the AI Platform Prediction predict route."""

from __future__ import annotations

import contextlib
import gc
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from types import ModuleType

import pytest
from caio_testing import LOCUST_DIR, LoopbackHTTPServer, load_locust_module

LOCUSTFILE = LOCUST_DIR / "locustfile.py"
PREDICT_PATH = "/v1/projects/p/models/m/versions/v1:predict"


@pytest.fixture(autouse=True)
def _no_full_collections_of_the_harness():
    """Freeze what the session allocated so far out of the garbage collector's reach during
    each test: the loopback servers here run as threads of pytest's own process, and a full
    collection of its heap late in the suite (100-300 ms measured) would stall them in the
    middle of a load the test measures."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def shapes_mod() -> ModuleType:
    return load_locust_module("shapes")


@pytest.fixture(scope="session")
def caio_load_mod() -> ModuleType:
    return load_locust_module("caio_load")


class PredictServer:
    """``POST PREDICT_PATH`` answers ``{"predictions": [...]}`` after ``delay_s``; every
    ``error_every``-th request gets 200 ``{"error": ...}`` and every ``fail_every``-th a 500
    (0: never). ``serial``: one request at a time (a server of known capacity, 1 / delay_s
    req/s, whose queue grows without bound above it)."""

    def __init__(self, delay_s: float = 0.005, error_every: int = 7, fail_every: int = 10,
                 serial: bool = False):
        self.delay_s = delay_s
        self.error_every = error_every or 2**62
        self.fail_every = fail_every or 2**62
        self.serial = threading.Lock() if serial else contextlib.nullcontext()
        self.counts: Counter[str] = Counter()
        self.signatures: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._n = 0
        self.httpd = LoopbackHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{PREDICT_PATH}"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real endpoint
            disable_nagle_algorithm = True  # else delayed ACKs add 40 ms per response

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != PREDICT_PATH:
                    return self._send(404, {"error": f"no route {self.path}"})
                doc = json.loads(body)
                with server.serial:
                    time.sleep(server.delay_s)
                with server._lock:
                    server._n += 1
                    n = server._n
                    server.signatures[doc.get("signature_name", "")] += 1
                    kind = ("fail" if n % server.fail_every == 0
                            else "error" if n % server.error_every == 0 else "ok")
                    server.counts[kind] += 1
                if kind == "fail":
                    return self._send(500, {"error": "internal error"})
                if kind == "error":
                    return self._send(200, {"error": "Prediction failed: bad input"})
                preds = [{"classes": [1, 2, 3], "scores": [0.5, 0.3, 0.2]}
                         for _ in doc["instances"]]
                return self._send(200, {"predictions": preds})

            def _send(self, code: int, doc: dict) -> None:
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                # a client stopped mid-request is expected at the end of a test
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

        return Handler

    def __enter__(self) -> PredictServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def predict_server():
    with PredictServer() as server:
        yield server


SERIAL_SERVICE_S = 0.010  # the serial server's capacity: 100 req/s


@pytest.fixture
def serial_server():
    """No errors, one request at a time in SERIAL_SERVICE_S."""
    with PredictServer(delay_s=SERIAL_SERVICE_S, error_every=0, fail_every=0,
                       serial=True) as server:
        yield server


@pytest.fixture(scope="session")
def schedule_mod() -> ModuleType:
    return load_locust_module("caio_schedule")


@pytest.fixture(scope="session")
def peak_mod() -> ModuleType:
    return load_locust_module("caio_peak")


@pytest.fixture(scope="session")
def cpu_mod() -> ModuleType:
    return load_locust_module("caio_cpu")


@pytest.fixture(scope="session")
def caio_hdr_mod() -> ModuleType:
    return load_locust_module("caio_hdr")
