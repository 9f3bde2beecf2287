"""The predict request on the wire: the payload's bodies POSTed to one URL, each request's
bytes built once, over one pool of keep-alive connections; one request event per request.

Question: what does one predict request cost the load generator, beyond the socket? With
Locust's ``FastHttpSession`` every request went through geventhttpclient's ``UserAgent``
(headers copied and merged, a cookie jar cleared and consulted, the request line and
headers formatted and validated, a ``FastResponse`` and then a ``ResponseContextManager``
copied from it). Our users send a handful of fixed bodies to one URL with fixed headers
and keep no cookies, so all of that is done once:

- ``Prepared``: per body, the request head (request line, Host, User-Agent, Content-Type,
  Content-Length, Authorization when a token is given), rebuilt only when the token
  changes (a Google API host's bearer token, refreshed every ~50 minutes);
- ``PredictClient.post``: take a connection from the pool, one ``sendall`` of head + body,
  geventhttpclient's C parser reads the response, the connection goes back to the pool.

The request event carries what ``FastHttpSession`` put in it (``request_type``, ``name``,
``response_time`` in ms around the request and the body read, ``response_length``,
``response``, ``context``, ``exception``, ``start_time``, ``url``), so Locust's stats and
``Context.record`` see the same figures. A response is a failure as it was with
``catch_response``: no response (the exception), a non-2xx status or a 2xx carrying
``error`` (``caio_load.response_error``, as a ``CatchResponseError``). Not followed: redirects (a
predict URL does not redirect; a 3xx is a failure) and cookies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from geventhttpclient.client import HTTPClient
from geventhttpclient.response import HTTPSocketPoolResponse
from geventhttpclient.url import URL
from locust.contrib.fasthttp import insecure_ssl_context_factory
from locust.exception import CatchResponseError

# isort: split
import caio_load
import caio_schedule


class Prepared:
    """The request heads of ``bodies`` for a POST to ``url`` (see the module docstring)."""

    def __init__(self, url: str, bodies: Sequence[bytes], user_agent: str) -> None:
        parsed = URL(url)
        host = parsed.host if ":" not in parsed.host else f"[{parsed.host}]"
        default_port = 443 if parsed.scheme == "https" else 80
        self.host = host if parsed.port in (None, default_port) else f"{host}:{parsed.port}"
        self.path = parsed.request_uri
        self.user_agent = user_agent
        self.bodies = list(bodies)
        self.token: str | None = None
        self.heads = self._heads(None)

    def _heads(self, token: str | None) -> list[bytes]:
        auth = f"Authorization: {token}\r\n" if token else ""
        common = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
                  f"User-Agent: {self.user_agent}\r\nContent-Type: application/json\r\n"
                  f"{auth}Content-Length: ")
        return [(common + f"{len(body)}\r\n\r\n").encode("latin-1") for body in self.bodies]

    def wire(self, index: int, token: str | None) -> bytes:
        """The bytes of request ``index`` (head + body) with ``token``."""
        if token != self.token:
            self.heads, self.token = self._heads(token), token
        return self.heads[index] + self.bodies[index]


class PredictClient:
    """POSTs of prepared requests to one origin over at most ``concurrency`` keep-alive
    connections; ``post`` fires the request event itself."""

    def __init__(self, url: str, prepared: Prepared, request_event: Any, *, name: str,
                 context: dict[str, Any], timeout_s: float, concurrency: int = 1,
                 token: Callable[[], str | None] = lambda: None) -> None:
        self.url = url
        self.prepared = prepared
        self.fire = request_event.fire
        self.name = name
        self.context = context
        self.token = token
        ssl = URL(url).scheme == "https"
        # as FastHttpSession's default (insecure=True): certificates are not checked
        self.client = HTTPClient.from_url(
            url, concurrency=concurrency, connection_timeout=timeout_s,
            network_timeout=timeout_s, insecure=True,
            ssl_context_factory=insecure_ssl_context_factory if ssl else None)
        self.pool = self.client._connection_pool  # what post() sends on
        self.block_size = self.client.block_size

    def close(self) -> None:
        self.client.close()

    def exchange(self, data: bytes) -> tuple[int, bytes]:
        """Send one request's bytes on a pooled connection (checked alive, as
        geventhttpclient does) and read the whole response: (status, body). Not retried: a
        POST that may have reached the server is not sent twice (RFC 9110 9.2.2, as
        geventhttpclient's client has it)."""
        pool = self.pool
        sock = pool.get_socket()
        try:
            sock.sendall(data)
        except BaseException:
            pool.release_socket(sock)
            raise
        # the response returns the connection to the pool (or closes it) once read
        response = HTTPSocketPoolResponse(sock, pool, block_size=self.block_size,
                                          method="POST")
        return response.status_code, response.read()

    def post(self, index: int, start_time: float | None = None,
             intended_perf: float | None = None) -> float | None:
        """Send request ``index`` now and fire its request event; return the latency from
        the actual send in ms (None when it failed before a response).

        Open loop: ``start_time`` (wall) and ``intended_perf`` are the intended send time,
        and the event's ``response_time`` counts from it."""
        data = self.prepared.wire(index, self.token())
        wall = time.time()
        started = time.perf_counter()
        status, body, exception = 0, b"", None
        try:
            status, body = self.exchange(data)
        except Exception as exc:  # what FastHttpSession reports as the request's exception
            exception = exc
        ended = time.perf_counter()
        if exception is None:
            error = caio_load.response_error(status, body)
            if error is not None:
                exception = CatchResponseError(error)
        sent_ms = (ended - started) * 1000.0
        self.fire(request_type="POST", name=self.name,
                  response_time=sent_ms if intended_perf is None
                  else caio_schedule.latency_from_intended_ms(intended_perf, ended),
                  response_length=len(body), response=Response(status, body),
                  context=self.context, exception=exception,
                  start_time=wall if start_time is None else start_time, url=self.url)
        return sent_ms if status else None


class Response:
    """What a request event's listeners read of a response."""

    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content
