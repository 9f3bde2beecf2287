"""Reference Locust users for ``bench/loadgen.py``: what the project's predict user is
compared with. Pick one by class name on the locust command line::

    BENCH_BODY_FILE=body.json BENCH_PATH=/v1/models/m:predict \\
        locust -f bench/bench_users.py --headless StockFastHttpUser

Each posts pre-encoded JSON bodies (``BENCH_BODY_FILE``: one body per line, the same
bodies the predict user sends, cycled from a different start per user) to ``BENCH_PATH``
on ``--host`` with no wait time, and does nothing else: the plainest way to use each client.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

from locust.contrib.fasthttp import FastHttpUser

from locust import HttpUser, User, constant, task

BODIES = (Path(os.environ["BENCH_BODY_FILE"]).read_bytes().splitlines()
          if os.environ.get("BENCH_BODY_FILE") else [b'{"instances": [[0.0]]}'])
PATH = os.environ.get("BENCH_PATH", "/v1/models/m:predict")
HEADERS = {"Content-Type": "application/json"}
_starts = itertools.count()


def _cycle(bodies: list) -> itertools.cycle:
    start = next(_starts) % len(bodies)
    return itertools.cycle(bodies[start:] + bodies[:start])


class StockHttpUser(HttpUser):
    """Locust's default client (python-requests)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.bodies = _cycle(BODIES)

    @task
    def predict(self) -> None:
        self.client.post(PATH, data=next(self.bodies), headers=HEADERS, name="predict")


class StockFastHttpUser(FastHttpUser):
    """Locust's fast client (geventhttpclient): the reference for the ratios."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.bodies = _cycle(BODIES)

    @task
    def predict(self) -> None:
        self.client.post(PATH, data=next(self.bodies), headers=HEADERS, name="predict")


class GoogleSampleUser(User):
    """Built like Google's original AI Platform load-testing sample: a google-auth
    ``AuthorizedSession`` (python-requests plus a bearer token from credentials) posting the
    instances with ``json=``, timed around the call and reported to Locust by hand.

    The credentials are fake and static (a fixed token, no expiry), so no refresh ever
    happens: only the client's own cost is measured."""

    wait_time = constant(0)
    abstract = False

    def on_start(self) -> None:
        from google.auth.transport.requests import AuthorizedSession
        from google.oauth2.credentials import Credentials

        self.session = AuthorizedSession(Credentials(token="bench-fake-token"))
        self.url = self.host.rstrip("/") + PATH
        self.documents = _cycle([json.loads(body) for body in BODIES])

    @task
    def predict(self) -> None:
        start_time = time.time()
        start = time.perf_counter()
        response, exception, length = None, None, 0
        try:
            response = self.session.post(self.url, json=next(self.documents), timeout=30)
            length = len(response.content)
            response.raise_for_status()
        except Exception as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="POST", name="predict",
            response_time=(time.perf_counter() - start) * 1000.0, response_length=length,
            response=response, context={}, exception=exception, start_time=start_time)
