"""caio-bench load test: predict calls against one deployed model version.

Run it as a Locust master + workers (or standalone) with a test config::

    locust -f locust/locustfile.py --headless --caio-config file:///.../load/config.json

The config (``--caio-config`` or ``CAIO_CONFIG``; local path, ``file://`` or ``gs://``) names
the predict URL, protocol, signature, payload and load shape (see ``caio_load.parse_config``).
Every user posts ``{"signature_name", "instances"}`` bodies from the payload in turn.
Locust's own stats come from the request event ``caio_http`` fires (``time.perf_counter``
around the request and body read only); a listener on that same event keeps every request as
a raw client record, flushed as ``<output_uri>/requests/worker-<id>-<seq>.csv`` every
``flush_interval_s`` and when the test stops, so the raw records and Locust's totals count
the same requests (with ``record_sample`` < 1 only that share of the successful ones is
kept; every failure is, and the histograms below count everything).

This file is the event wiring; the parts live in its sibling modules:

- ``caio_context``: the per-process ``Context`` (kept on ``environment.caio``): config,
  bodies, and where each request is recorded (raw records, per-second HDR histograms
  flushed to ``<output_uri>/histograms/``, the peak search's window);
- ``caio_openloop``: open loop (``open_rate``): one ``OpenRateUser`` per worker runs the
  worker's share of the intended send times; every open-loop worker starts from the
  master's one wall-clock start (``caio_t0``, sent at test start, half a second ahead);
- ``caio_peak_run``: peak search over Locust's custom messages (``caio_window``,
  ``caio_rate``), the pure controller being ``caio_peak``;
- ``caio_cloud``: bearer tokens for Google API hosts, and on the master Locust's files to
  ``CAIO_PUBLISH_URI`` at exit and Cloud Logging entries for the log-based metrics;
- ``caio_cpu``: every process that sends requests samples its own CPU every second
  (``<output_uri>/workers/``): a worker near 100% sends and times late, and harvest flags it.

Standalone on purpose: stdlib, locust and gevent only (google-auth / google-cloud-storage /
google-cloud-logging when a Google API host, ``gs://`` or Cloud Logging needs them); no
Airflow, TensorFlow or caio_operators imports.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from locust.runners import MasterRunner, WorkerRunner

from locust import LoadTestShape, User, constant, events, task

# isort: split
# siblings of this file: locust puts the locustfile's folder on sys.path while importing it
import caio_cloud
import caio_load
import caio_openloop
import caio_peak_run
import shapes
from caio_context import Context

log = logging.getLogger("caio")

INIT_TIMEOUT_S = 120.0  # how long a user waits for its worker's init to load the payload
START_DELAY_S = 0.5  # open loop: the shared start is this far after the master's test start
# how long the shape waits for every worker's caio_ready before it starts without the late
# ones: inside the launcher's 30 s grace beyond the shape (loadgen/local.py)
READY_TIMEOUT_S = 20.0


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument(
        "--caio-config", type=str, default="", env_var="CAIO_CONFIG",
        help="URI of the caio test config JSON (path, file:// or gs://)",
    )
    parser.add_argument(
        "--caio-workers", type=int, default=1, env_var="CAIO_WORKERS",
        help="how many Locust workers share the open_rate schedule",
    )
    parser.add_argument(
        "--caio-worker-index", type=int, default=-1, env_var="CAIO_WORKER_INDEX",
        help="this worker's share (0..workers-1) of the open_rate schedule; default: "
             "JOB_COMPLETION_INDEX (Indexed GKE Job) or 0",
    )


def _worker_slot(options: Any) -> tuple[int, int]:
    """(workers, this worker's index). Read at init: the master's spawn message later
    overwrites a worker's custom options with its own."""
    workers = int(getattr(options, "caio_workers", 1) or 1)
    index = int(getattr(options, "caio_worker_index", -1))
    if index < 0:
        index = int(os.environ.get("JOB_COMPLETION_INDEX", "0") or 0)
    if workers < 1 or not 0 <= index < workers:
        sys.exit(f"caio: worker index {index} of {workers} workers; pass --caio-workers N "
                 "and --caio-worker-index 0..N-1")
    return workers, index


def _describe(exc: Exception) -> str:
    if isinstance(exc, caio_load.ConfigError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@events.init.add_listener
def _on_init(environment, **_: Any) -> None:
    options = environment.parsed_options
    uri = (getattr(options, "caio_config", "") if options else "") or os.environ.get(
        "CAIO_CONFIG", "")
    if not uri:
        sys.exit("caio: no test config; pass --caio-config <uri> or set CAIO_CONFIG")
    try:
        cfg = caio_load.load_config(uri)
    except Exception as exc:  # a bad config must stop this process, not be logged and ignored
        sys.exit(f"caio: {_describe(exc)}")
    ctx = environment.caio = Context(cfg, *_worker_slot(options))
    environment.events.request.add_listener(ctx.record)
    PredictUser.wait_time = constant(cfg["think_time_s"])
    if not environment.host:
        environment.host = caio_load.origin(cfg["predict_url"])
    log.info("caio: test %s: %s %s signature=%s shape=%s", cfg["test_id"], cfg["protocol"],
             cfg["predict_url"], cfg["signature"], shapes.steps(cfg["shape"]))
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        caio_cloud.start_cloud_reporting(environment, cfg)
    if cfg["shape"]["kind"] in shapes.OPEN_LOOP and not isinstance(runner, MasterRunner):
        def on_t0(environment: Any, msg: Any, **_: Any) -> None:
            ctx.t0 = float(msg.data["t0"])
            ctx.t0_set.set()

        runner.register_message("caio_t0", on_t0)
    if cfg["shape"]["kind"] == "peak_search":
        caio_peak_run.init_peak_search(environment, ctx)
    if isinstance(runner, MasterRunner):
        runner.register_message("caio_ready", lambda environment, msg, **_: _on_worker_ready(
            environment, msg.node_id))
        return  # the master only runs the shape; workers send requests
    try:
        ctx.load_worker()
    except Exception as exc:
        sys.exit(f"caio: payload {cfg['payload_uri']}: {_describe(exc)}")
    if isinstance(runner, WorkerRunner):
        # A worker is connected (and the master may start the test) before its init ran:
        # the master's shape waits for this, so no second of the schedule passes unserved.
        runner.send_message("caio_ready", {"worker": ctx.worker_index})
    else:
        ctx.all_ready.set()


def _on_worker_ready(environment: Any, node_id: str) -> None:
    """Master: one more worker has its payload; with all of them the shape's clock starts
    (``ConfigShape``), and with it an open-loop schedule's shared start."""
    ctx = Context.of(environment)
    if ctx is None:
        return
    ctx.ready_workers.add(node_id)
    if len(ctx.ready_workers) >= ctx.workers and not ctx.all_ready.is_set():
        log.info("caio: all %d workers ready", ctx.workers)
        ctx.all_ready.set()


def _send_t0(environment: Any, ctx: Context) -> None:
    """Open loop: every worker's schedule counts from the same start, a moment ahead (this
    message reaches each worker before the master's spawn message does)."""
    if ctx.shape["kind"] not in shapes.OPEN_LOOP or ctx.t0_sent:
        return
    if environment.runner is None or not ctx.test_started or not ctx.all_ready.is_set():
        return
    ctx.t0_sent = True
    environment.runner.send_message("caio_t0", {"t0": time.time() + START_DELAY_S})


@events.test_start.add_listener
def _on_test_start(environment, **_: Any) -> None:
    """Master (or standalone): the open-loop start, now if every worker is ready (else when
    the last one says so), so the workers' shares of the schedule interleave as planned."""
    ctx = Context.of(environment)
    if ctx is None or isinstance(environment.runner, WorkerRunner):
        return
    ctx.test_started = True
    _send_t0(environment, ctx)


@events.test_stop.add_listener
def _on_test_stop(environment, **_: Any) -> None:
    ctx = Context.of(environment)
    if ctx is not None:
        ctx.flush("test stop")


@events.quitting.add_listener
def _on_quitting(environment, **_: Any) -> None:
    ctx = Context.of(environment)
    if ctx is None:
        return
    if ctx.peak is not None:
        ctx.peak.finish()
    ctx.flush("quit")
    ctx.log_totals()


def _worker_context(user: User) -> Context:
    """The user's process context, once its init has loaded the payload."""
    ctx = Context.of(user.environment)
    if ctx is None or not ctx.ready.wait(timeout=INIT_TIMEOUT_S):
        raise RuntimeError(f"caio: init did not load the payload within {INIT_TIMEOUT_S:.0f} s")
    return ctx


class PredictUser(User):
    """One client: posts the payload's request bodies in turn to the predict URL, over its
    own keep-alive connection (``caio_http``: each request's bytes built once)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.ctx = _worker_context(self)
        assert self.ctx.bodies, "caio: init did not load the test config"
        self.client = self.ctx.client(self.environment.events.request)
        self.count = len(self.ctx.bodies)
        # users start at different bodies so they do not all send the same image at once
        self.index = next(self.ctx.users) % self.count

    def on_stop(self) -> None:
        self.client.close()

    @task
    def predict(self) -> None:
        index = self.index
        self.index = index + 1 if index + 1 < self.count else 0
        self.client.post(index)


class OpenRateUser(User):
    """open_rate and peak_search: one per worker; its task runs the worker's scheduler once."""

    wait_time = constant(1)

    def on_start(self) -> None:
        self.ctx = _worker_context(self)

    @task
    def schedule(self) -> None:
        if self.ctx.scheduling:  # a second user on this worker: the schedule is not its to run
            return
        self.ctx.scheduling = True
        caio_openloop.OpenLoop(self.environment, self.ctx).run()


class ConfigShape(LoadTestShape):
    """Constant or staircase users, or one open-loop scheduler per worker, read from the
    test config (see ``shapes.py``); a peak search ends when its controller is done. Its
    clock starts when every worker has its payload (``caio_ready``), not when they connect."""

    clock_started = False

    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        ctx = Context.of(self.runner.environment) if self.runner is not None else None
        if ctx is None:
            return None
        if ctx.peak is not None and ctx.peak.done:
            return None
        shape = ctx.shape
        users = OpenRateUser if shape["kind"] in shapes.OPEN_LOOP else PredictUser
        if not ctx.all_ready.is_set():  # the clock starts once every worker can send
            if self.get_run_time() < READY_TIMEOUT_S:
                return 0, 1.0, [users]
            log.warning("caio: %d of %d workers ready after %.0f s; starting without the "
                        "others", len(ctx.ready_workers), ctx.workers, READY_TIMEOUT_S)
            ctx.all_ready.set()
        if not self.clock_started:  # the shape and the open-loop schedule start together
            self.clock_started = True
            self.reset_time()
            assert self.runner is not None  # tick() runs under a runner
            _send_t0(self.runner.environment, ctx)
        tick = shapes.tick(shape, self.get_run_time(), workers=ctx.workers)
        if tick is None:
            return None
        return tick[0], tick[1], [users]
