"""The locustfile's Google Cloud side: bearer tokens for Google API hosts, and on the master
only (the process that holds the aggregated stats):

- with ``CAIO_PUBLISH_URI`` set (the GKE launcher sets it), Locust's CSVs and HTML report are
  uploaded there when the process exits (Locust writes the HTML and closes the CSVs only
  then, so this runs from ``atexit``);
- with a ``cloud_logging`` config (``{"project", "log_name", "interval_s"}``), a greenlet writes
  one Cloud Logging entry per signature every ``interval_s`` in one batch: the source of the
  log-based metrics and the live dashboard. Its errors are logged, never raised.

google-auth and the Google client libraries are imported only when a run needs them.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
from typing import Any

import gevent
from locust.runners import STATE_RUNNING, STATE_SPAWNING

# isort: split
import caio_load

log = logging.getLogger("caio")

TOKEN_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class TokenRefresher:
    """An OAuth bearer token for Google API hosts, refreshed by a background greenlet well
    before it expires, so no request ever waits for a refresh."""

    def __init__(self) -> None:
        import google.auth
        import google.auth.transport.requests

        self._creds, _ = google.auth.default(scopes=list(TOKEN_SCOPES))
        self._request = google.auth.transport.requests.Request()
        self.header: str | None = None

    def start(self) -> None:
        try:
            self._refresh()
        except Exception as exc:
            log.error("caio: cannot get an access token (%s); retrying in the background",
                      type(exc).__name__)
        gevent.spawn(self._loop)

    def _refresh(self) -> None:
        self._creds.refresh(self._request)
        self.header = f"Bearer {self._creds.token}"

    def _loop(self) -> None:
        while True:
            expiry = getattr(self._creds, "expiry", None)
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # google-auth uses naive UTC
            delay = caio_load.refresh_delay_s(expiry, now) if self.header else 15.0
            gevent.sleep(delay)
            try:
                self._refresh()
            except Exception as exc:  # keep the old token; try again soon
                log.warning("caio: token refresh failed (%s); retrying", type(exc).__name__)
                gevent.sleep(15.0)


def start_cloud_reporting(environment: Any, cfg: dict[str, Any]) -> None:
    """Master (or standalone) only: publish Locust's files at exit, stats to Cloud Logging."""
    publish_uri = os.environ.get(caio_load.PUBLISH_ENV, "")
    options = environment.parsed_options
    if publish_uri and options is not None:
        atexit.register(_publish_at_exit, publish_uri, options)
        log.info("caio: Locust's CSV/HTML go to %s at exit", publish_uri)
    if cfg.get("cloud_logging"):
        # The client is made here, at init, before any user starts: importing the client
        # library and finding credentials take seconds in which no greenlet runs, and in the
        # loop they froze the master mid-test (a short shape ran out before any spawn).
        try:
            client = _logging_client()
        except Exception as exc:
            log.error("caio: Cloud Logging is off for this run: cannot create the client "
                      "(%s: %s); the load goes on without log-based metrics",
                      type(exc).__name__, exc)
            return
        gevent.spawn(_cloud_log_loop, environment, cfg, cfg["cloud_logging"], client)


def _publish_at_exit(publish_uri: str, options: Any) -> None:
    # Options are read now: Locust may rewrite html_file (name templates) when saving it.
    try:
        written = caio_load.publish_outputs(publish_uri, getattr(options, "csv_prefix", None),
                                            getattr(options, "html_file", None))
        log.info("caio: published %d Locust files to %s", len(written), publish_uri)
    except Exception as exc:
        log.error("caio: cannot publish Locust's files to %s (%s: %s)", publish_uri,
                  type(exc).__name__, exc)


def signature_stats(stats: Any) -> list[tuple[str, float | None, int, int]]:
    """(signature, p95 ms over Locust's ~10 s window, requests, failures) per signature."""
    out = []
    for (name, _method), entry in list(stats.entries.items()):
        signature = caio_load.signature_of(name)
        if signature is None:
            continue
        p95 = None
        if entry.num_requests:
            try:
                p95 = entry.get_current_response_time_percentile(0.95)
            except ValueError:  # no response-times cache in this process
                p95 = None
            if p95 is None:  # the window is not filled yet: since the start
                p95 = entry.get_response_time_percentile(0.95)
        out.append((signature, p95, entry.num_requests, entry.num_failures))
    return out


def _logging_client() -> Any:
    # gRPC must cooperate with gevent, or each write would block every greenlet (as
    # locust.contrib.milvus does); this has to run before the first gRPC channel exists.
    try:
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
    except ImportError:
        log.warning("caio: grpc's gevent support is missing; Cloud Logging writes may block")
    return caio_load.make_logging_client()


def _cloud_log_loop(environment: Any, cfg: dict[str, Any], settings: dict[str, Any],
                    client: Any) -> None:
    """Every ``interval_s`` while users run, one batch of entries (one per signature)."""
    interval = float(settings["interval_s"])
    written = 0
    while True:
        gevent.sleep(interval)
        runner = environment.runner
        if runner is None or runner.state not in (STATE_SPAWNING, STATE_RUNNING):
            continue
        try:
            payloads = caio_load.log_payloads(
                test_id=cfg["test_id"], model=cfg.get("model", ""),
                user_count=runner.user_count, stats=signature_stats(environment.stats))
            if not payloads:
                continue
            request = caio_load.log_entries_request(settings["project"], settings["log_name"],
                                                    payloads)
            client.write_log_entries(request=request, timeout=max(interval, 5.0))
            written += len(payloads)
            if written == len(payloads):
                log.info("caio: writing Locust stats to Cloud Logging %s every %.0f s",
                         request["log_name"], interval)
        except Exception as exc:  # a lost entry is a gap in a chart, never a failed test
            log.warning("caio: cannot write to Cloud Logging (%s: %s); retrying in %.0f s",
                        type(exc).__name__, exc, interval)
