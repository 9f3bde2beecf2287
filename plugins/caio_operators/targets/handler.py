"""A replica's request handler: HTTP/1.1 in, ``ServingApp`` answers out, each one recorded.

Reads each request within its deadline (slow clients get 408), refuses oversized and
chunked bodies early (413, 411), answers in JSON with ``X-Caio-Replica``, and records every
request that is not a probe (``records.py``).
"""

from __future__ import annotations

import io
import logging
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import Literal

from caio_operators.targets.records import CsvBatchWriter
from caio_operators.targets.serving_app import Reply, ServingApp, error_reply, reason

log = logging.getLogger("caio_operators.targets.replica")

IDLE_TIMEOUT_S = 120  # an idle keep-alive connection is closed after this
DRAIN_LIMIT = 64 * 2**20  # read and drop an oversized body up to this size to answer it cleanly
ERROR_TEXT_LIMIT = 200


class DeadlineReader(socket.SocketIO):
    """A connection's raw reader with a deadline: while ``deadline`` is set, every read
    waits only for the time left before it, so a request trickling in a byte at a time
    still ends there (``timed_out``)."""

    deadline: float | None = None
    timed_out = False

    def __init__(self, sock: socket.socket, mode: Literal["rb"] = "rb") -> None:
        super().__init__(sock, mode)
        self.sock = sock

    def readinto(self, buffer) -> int | None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.timed_out = True
                raise TimeoutError("the request did not arrive in time")
            self.sock.settimeout(left)
        try:
            return super().readinto(buffer)
        except TimeoutError:
            self.timed_out = self.deadline is not None
            raise


def make_handler(app: ServingApp, recorder: CsvBatchWriter, max_body_bytes: int,
                 request_timeout_s: float):
    """The request handler class of one replica; ``request_timeout_s``: a request's head
    and body must arrive within it from its first byte (slow clients get 408)."""
    replica = app.replica

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "caio-serve"
        disable_nagle_algorithm = True  # headers and body go out in one write anyway
        timeout = IDLE_TIMEOUT_S

        def log_message(self, format, *args) -> None:
            pass  # per-request logging would cost more than the request

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # replaced by one whose reads keep the request's deadline
            self.connection._io_refs += 1  # what socket.makefile does for its readers
            self.raw_reader = DeadlineReader(self.connection, "rb")
            self.reader = io.BufferedReader(self.raw_reader)
            self.rfile = self.reader

        def _idle(self) -> None:
            self.raw_reader.deadline = None
            self.connection.settimeout(IDLE_TIMEOUT_S)

        def handle_one_request(self) -> None:
            # Waiting for the next request on a keep-alive connection is idle time; the
            # request's own deadline starts with its first byte.
            self._idle()
            waiting = getattr(self.server, "waiting", None)  # the handoff server's
            if waiting is not None:
                waiting(self.connection, True)
            try:
                if not self.reader.peek(1):
                    self.close_connection = True
                    return
            except (TimeoutError, OSError):
                self.close_connection = True
                return
            finally:
                if waiting is not None:
                    waiting(self.connection, False)
            ts, t0 = time.time(), time.perf_counter()
            self.raw_reader.deadline = time.monotonic() + request_timeout_s
            super().handle_one_request()
            if self.raw_reader.timed_out:
                self.raw_reader.timed_out = False
                self.connection.settimeout(IDLE_TIMEOUT_S)  # for the answer
                self._reject(408, f"the request did not arrive within {request_timeout_s:g} "
                             "s of its first byte", True, ts, t0)

        def _record(self, reply: Reply, ts: float, latency_s: float) -> None:
            if reply.record:
                error = " ".join(reply.error.split())[:ERROR_TEXT_LIMIT]
                timed = reply.ok
                recorder.add((f"{ts:.6f}", f"{latency_s * 1000:.3f}", int(reply.ok),
                              reply.status, reply.signature, replica, reply.instances, error,
                              f"{reply.model_ms:.3f}" if timed else "",
                              f"{reply.queue_ms:.3f}" if timed else ""))

        def _write(self, reply: Reply, close: bool = False) -> None:
            if close or self.close_connection or getattr(
                    self.server, "close_after_answer", bool)():
                self.close_connection = True
            lines = [f"HTTP/1.1 {reply.status} {reason(reply.status)}",
                     "Content-Type: application/json",
                     f"Content-Length: {len(reply.body)}",
                     f"X-Caio-Replica: {replica}",
                     "Connection: close" if self.close_connection else "Connection: keep-alive"]
            if reply.allow:
                lines.append(f"Allow: {reply.allow}")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            body = b"" if getattr(self, "command", None) == "HEAD" else reply.body
            try:
                self.wfile.write(head + body)
            except (ConnectionError, TimeoutError):
                self.close_connection = True

        def _reject(self, status: int, message: str, close: bool, ts: float, t0: float) -> None:
            reply = error_reply(status, message, path=getattr(self, "path", ""))
            self._record(reply, ts, time.perf_counter() - t0)
            self._write(reply, close=close)

        def send_error(self, code, message=None, explain=None) -> None:
            # Malformed request lines, oversized headers, unknown methods: JSON, then close.
            text = f"{code} {reason(code)}: {message or explain or 'malformed request'}"
            self._reject(code, text, True, time.time(), time.perf_counter())

        def handle_expect_100(self) -> bool:
            length = _content_length(self.headers.get("Content-Length", ""))
            if length is not None and length > max_body_bytes:
                self._reject(413, _too_large(length, max_body_bytes), True,
                             time.time(), time.perf_counter())
                return False
            return super().handle_expect_100()

        def _read_body(self, ts: float, t0: float) -> bytes | None:
            if self.headers.get("Transfer-Encoding"):
                self._reject(411, "chunked bodies are not supported; send a Content-Length",
                             True, ts, t0)
                return None
            length_text = self.headers.get("Content-Length")
            if length_text is None:
                if self.command == "POST":
                    self._reject(411, "a POST needs a Content-Length header", True, ts, t0)
                    return None
                return b""
            length = _content_length(length_text)
            if length is None:
                self._reject(400, f"bad Content-Length {length_text[:40]!r}", True, ts, t0)
                return None
            if length > max_body_bytes:
                fits = length <= DRAIN_LIMIT and self._drain(length)
                self._reject(413, _too_large(length, max_body_bytes), not fits, ts, t0)
                return None
            try:
                body = self.rfile.read(length)
            except (ConnectionError, TimeoutError, OSError):
                body = b""
            if len(body) < length:  # the client hung up mid-body: no one to answer
                self.close_connection = True
                return None
            return body

        def _drain(self, length: int) -> bool:
            try:
                while length > 0:
                    chunk = self.rfile.read(min(length, 2**20))
                    if not chunk:
                        return False
                    length -= len(chunk)
            except (ConnectionError, TimeoutError, OSError):
                return False
            return True

        def _serve(self) -> None:
            ts, t0 = time.time(), time.perf_counter()
            body = self._read_body(ts, t0)
            if body is None:
                return
            self._idle()  # the request is in: answering it is not bound by its deadline
            # Server-side latency: from the request fully read to the response ready.
            ts, t0 = time.time(), time.perf_counter()
            try:
                reply = app.handle(self.command, self.path, body)
            except Exception as exc:
                log.exception("unhandled error for %s %s", self.command, self.path[:200])
                reply = error_reply(500, f"internal error: {type(exc).__name__}")
            self._record(reply, ts, time.perf_counter() - t0)
            self._write(reply)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    return Handler


def _content_length(text: str) -> int | None:
    """The value of a Content-Length header, None unless it is plain ASCII digits."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _too_large(length: int, limit: int) -> str:
    return (f"request body is {length} bytes, over the limit of {limit} bytes; send fewer "
            "instances per request or raise --max-body-bytes")
