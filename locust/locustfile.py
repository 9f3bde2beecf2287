"""caio-bench load test: predict calls against one deployed model version.

Run it as a Locust master + workers (or standalone) with a test config::

    locust -f locust/locustfile.py --headless --caio-config file:///.../load/config.json

The config (``--caio-config`` or ``CAIO_CONFIG``; local path, ``file://`` or ``gs://``) names
the predict URL, protocol, signature, payload and load shape (see ``caio_load.parse_config``).
Every user posts ``{"signature_name", "instances"}`` bodies from the payload in turn. Locust's
own stats come from FastHttpSession's request event (``time.perf_counter`` around the request
and body read only); a listener on that same event keeps every request as a raw client record,
flushed as ``<output_uri>/requests/worker-<id>-<seq>.csv`` every ``flush_interval_s`` and when
the test stops, so the raw records and Locust's totals count the same requests (with
``record_sample`` < 1 only that share of the successful ones is kept; every failure is, and
the histograms below count everything).

Open loop (``shape.kind == "open_rate"``): the shape runs one ``OpenRateUser`` per worker,
whose task is the worker's scheduler: it walks the worker's share of the intended send times
(``caio_schedule.intended_times``: ``rate`` req/s, constant or Poisson, split over
``--caio-workers`` by ``--caio-worker-index`` or, in an Indexed GKE Job,
``JOB_COMPLETION_INDEX``), sleeps until each, admits it through an ``InFlightLimiter``
(``max_in_flight``) and sends it from its own greenlet on one FastHttpSession whose pool
holds ``max_in_flight`` connections, so a stalled server never delays the next send. The
request event it fires carries ``start_time`` = the intended send time and
``response_time`` = latency from the intended send time (``latency_from_intended_ms``), so
Locust's stats and the raw records' ``ts``/``latency_ms`` are open-loop figures; the latency
from the actual send is kept in an in-memory histogram and logged at the end. A send that
cannot start on time (in-flight cap reached, or more than 1 s late) is not sent: it is
written as a raw record with ``ok=0``, no latency and error ``dropped: ...`` (a failure for
harvest; Locust's own stats do not see it). Every request also goes into a per-second HDR
histogram (``caio_hdr``), flushed with the raw records to
``<output_uri>/histograms/worker-<id>-<seq>.jsonl`` (closed-loop requests too).

The master gives every open-loop worker the same wall-clock start (``caio_t0``, sent at
test start, half a second ahead) so their shares interleave as planned; a ``rate_profile``
(staircase, spike) shapes the rate over time (``caio_schedule.profile_for``).

Peak search (``shape.kind == "peak_search"``): the same open-loop scheduler at one constant
rate per step. Each worker sends the master a report every ``window_s`` (``caio_window``:
requests, errors incl. dropped sends, an HDR histogram of its latencies); the master
(``PeakMaster``, or the standalone process) merges each window across workers
(``caio_peak.WindowCollector``), feeds ``caio_peak.PeakSearch``, broadcasts the next rate
(``caio_rate``), writes ``<output_uri>/peak/search.json`` after every window, and ends the
test when the search is done. Workers let the last step's requests drain before a new
step's windows open.

Every process that sends requests (a worker, or a standalone run) also samples its own CPU
(``time.process_time``) every second from a greenlet and writes CPU % of one core per
second to ``<output_uri>/workers/worker-<id>-<seq>.csv`` with the same flushes
(``caio_cpu.CpuBuffer``): a worker near 100% sends and times late, and harvest flags it.

Cloud runs, on the master only (the process that holds the aggregated stats):

- with ``CAIO_PUBLISH_URI`` set (the GKE launcher sets it), Locust's CSVs and HTML report are
  uploaded there when the process exits (Locust writes the HTML and closes the CSVs only
  then, so this runs from ``atexit``);
- with a ``cloud_logging`` config (``{"project", "log_name", "interval_s"}``), a greenlet writes
  one Cloud Logging entry per signature every ``interval_s`` in one batch: the source of the
  log-based metrics and the live dashboard. Its errors are logged, never raised.

Standalone on purpose: stdlib, locust and gevent only (google-auth / google-cloud-storage /
google-cloud-logging when a Google API host, ``gs://`` or Cloud Logging needs them); no
Airflow, TensorFlow or caio_operators imports.
"""

from __future__ import annotations

import atexit
import datetime as dt
import itertools
import json
import logging
import math
import os
import random
import sys
import time
import zlib
from typing import Any

import gevent
import gevent.event
from locust.contrib.fasthttp import FastHttpSession, FastHttpUser
from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner

from locust import LoadTestShape, User, constant, events, task

# isort: split
# siblings of this file: locust puts the locustfile's folder on sys.path while importing it
import caio_cpu
import caio_hdr
import caio_load
import caio_peak
import caio_schedule
import shapes

log = logging.getLogger("caio")

TOKEN_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
INIT_TIMEOUT_S = 120.0  # how long a user waits for its worker's init to load the payload
CPU_SAMPLE_S = 1.0  # a worker's CPU sampling period
STEP_POLL_S = 0.1  # how often a peak_search scheduler waiting for its next send checks the step
START_DELAY_S = 0.5  # open loop: the shared start is this far after the master's test start


class _State:
    """What this process loaded at init (one test per process)."""

    cfg: dict[str, Any] | None = None
    bodies: list[bytes] = []
    records: caio_load.RecordBuffer | None = None
    token: TokenRefresher | None = None
    users = itertools.count()
    workers = 1
    worker_index = 0
    hists: caio_hdr.HistogramBuffer | None = None
    # raw records of successful requests kept (failures are all kept); the histograms see all
    sample = 1.0
    sampler = random.Random(0)  # noqa: S311 - a sample, not a secret
    cpu: caio_cpu.CpuBuffer | None = None  # this process's CPU per second
    scheduling = False  # this worker's open_rate scheduler has started
    # peak_search: the step this worker sends at, its total rate (all workers) and the
    # window of measurements it is filling; the master (or a standalone run) holds the search
    step = 0
    rate = 0.0
    window: PeakWindow | None = None
    # open loop: the wall-clock start every worker's schedule counts from (from the master)
    t0: float | None = None
    t0_set = gevent.event.Event()
    step_changed = gevent.event.Event()  # the master moved to another step
    step_started = gevent.event.Event()  # this worker's scheduler began sending it
    peak: PeakMaster | None = None
    # Set when a worker has its request bodies. A worker is connected to the master before
    # its init runs, and reading a gs:// payload yields to other greenlets: the master's
    # spawn message can start users before init is done.
    ready = gevent.event.Event()


STATE = _State()


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
    STATE.cfg = cfg
    STATE.workers, STATE.worker_index = _worker_slot(options)
    PredictUser.wait_time = constant(cfg["think_time_s"])
    PredictUser.network_timeout = float(cfg["request_timeout_s"])
    PredictUser.connection_timeout = float(cfg["request_timeout_s"])
    if not environment.host:
        environment.host = caio_load.origin(cfg["predict_url"])
        PredictUser.host = environment.host
    log.info("caio: test %s: %s %s signature=%s shape=%s", cfg["test_id"], cfg["protocol"],
             cfg["predict_url"], cfg["signature"], shapes.steps(cfg["shape"]))
    if not isinstance(environment.runner, WorkerRunner):
        _start_cloud_reporting(environment, cfg)
    if cfg["shape"]["kind"] in shapes.OPEN_LOOP and not isinstance(environment.runner,
                                                                      MasterRunner):
        environment.runner.register_message("caio_t0", _on_t0)
    if cfg["shape"]["kind"] == "peak_search":
        _init_peak_search(environment, cfg)
    if isinstance(environment.runner, MasterRunner):
        return  # the master only runs the shape; workers send requests
    try:
        payload = json.loads(caio_load.read_uri(cfg["payload_uri"]))
        STATE.bodies = caio_load.request_bodies(cfg, payload)
    except Exception as exc:
        sys.exit(f"caio: payload {cfg['payload_uri']}: {_describe(exc)}")
    STATE.records = caio_load.RecordBuffer(cfg["output_uri"], caio_load.worker_id())
    STATE.sample = float(cfg["record_sample"])
    STATE.sampler = random.Random(f"{cfg['test_id']}:{STATE.records.worker}")  # noqa: S311
    # every request also lands in a per-second HDR histogram: exact-to-1% percentiles in
    # bounded memory whatever the run's length, closed or open loop
    STATE.hists = caio_hdr.HistogramBuffer(cfg["output_uri"], STATE.records.worker)
    if caio_load.needs_google_auth(cfg["predict_url"]):
        STATE.token = TokenRefresher()
        STATE.token.start()
    STATE.cpu = caio_cpu.CpuBuffer(cfg["output_uri"], STATE.records.worker)
    gevent.spawn(_cpu_loop, STATE.cpu)
    gevent.spawn(_flush_loop, float(cfg["flush_interval_s"]))
    STATE.ready.set()
    log.info("caio: worker %s ready: %d request bodies, records to %s",
             STATE.records.worker, len(STATE.bodies), cfg["output_uri"])


def _start_cloud_reporting(environment, cfg: dict[str, Any]) -> None:
    """Master (or standalone) only: publish Locust's files at exit, stats to Cloud Logging."""
    publish_uri = os.environ.get(caio_load.PUBLISH_ENV, "")
    options = environment.parsed_options
    if publish_uri and options is not None:
        atexit.register(_publish_at_exit, publish_uri, options)
        log.info("caio: Locust's CSV/HTML go to %s at exit", publish_uri)
    if cfg.get("cloud_logging"):
        gevent.spawn(_cloud_log_loop, environment, cfg, cfg["cloud_logging"])


def _publish_at_exit(publish_uri: str, options: Any) -> None:
    # Options are read now: Locust may rewrite html_file (name templates) when saving it.
    try:
        written = caio_load.publish_outputs(publish_uri, getattr(options, "csv_prefix", None),
                                            getattr(options, "html_file", None))
        log.info("caio: published %d Locust files to %s", len(written), publish_uri)
    except Exception as exc:
        log.error("caio: cannot publish Locust's files to %s (%s: %s)", publish_uri,
                  type(exc).__name__, exc)


def _signature_stats(stats) -> list[tuple[str, float | None, int, int]]:
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


def _cloud_log_loop(environment, cfg: dict[str, Any], settings: dict[str, Any]) -> None:
    """Every ``interval_s`` while users run, one batch of entries (one per signature)."""
    interval = float(settings["interval_s"])
    client = None
    written = 0
    while True:
        gevent.sleep(interval)
        runner = environment.runner
        if runner is None or runner.state not in (STATE_SPAWNING, STATE_RUNNING):
            continue
        try:
            if client is None:
                client = _logging_client()
        except Exception as exc:
            log.error("caio: Cloud Logging is off for this run: cannot create the client "
                      "(%s: %s); the load goes on without log-based metrics",
                      type(exc).__name__, exc)
            return
        try:
            payloads = caio_load.log_payloads(
                test_id=cfg["test_id"], model=cfg.get("model", ""),
                user_count=runner.user_count, stats=_signature_stats(environment.stats))
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


def _describe(exc: Exception) -> str:
    if isinstance(exc, caio_load.ConfigError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _flush(reason: str) -> None:
    for buffer in (STATE.records, STATE.hists, STATE.cpu):
        if buffer is None:
            continue
        try:
            uri = buffer.flush()
        except Exception as exc:
            log.error("caio: cannot write %s under %s (%s: %s); kept for the next flush",
                      type(buffer).__name__, buffer.output_uri, type(exc).__name__, exc)
            continue
        if uri:
            log.debug("caio: flushed to %s (%s)", uri, reason)


def _cpu_loop(buffer: caio_cpu.CpuBuffer) -> None:
    # a late wake-up (a busy worker) only lengthens the window: CPU % divides by wall time
    while True:
        buffer.sample(time.time(), time.process_time())
        gevent.sleep(CPU_SAMPLE_S)


def _flush_loop(interval_s: float) -> None:
    while True:
        gevent.sleep(interval_s)
        _flush("interval")


@events.request.add_listener
def _record(request_type: str, name: str, response_time: float, response_length: int,
            response: Any = None, context: dict | None = None, exception: Exception | None = None,
            start_time: float | None = None, **_: Any) -> None:
    if STATE.records is None:
        return
    status = getattr(response, "status_code", 0) or 0
    error = None
    if exception is not None:
        error = str(exception) if status else f"{type(exception).__name__}: {exception}"
    ts = start_time if start_time is not None else time.time() - response_time / 1000.0
    signature = (context or {}).get("signature", "")
    if STATE.hists is not None:
        STATE.hists.add(ts, signature, response_time, exception is None)
    if STATE.window is not None:
        STATE.window.add(response_time, exception is None)
    if exception is None and STATE.sample < 1.0 and STATE.sampler.random() >= STATE.sample:
        return  # not in the raw-record sample; the histograms count it (failures all kept)
    STATE.records.add(
        ts=ts,
        latency_ms=response_time,
        ok=exception is None,
        status_code=status,
        signature=signature,
        nbytes=response_length or 0,
        error=error,
    )


@events.test_start.add_listener
def _on_test_start(environment, **_: Any) -> None:
    """Master (or standalone): give every open-loop worker the same start, a moment ahead,
    so their shares of the schedule interleave as planned (this message reaches each worker
    before the master's spawn message does)."""
    cfg = STATE.cfg
    if cfg is None or cfg["shape"]["kind"] not in shapes.OPEN_LOOP:
        return
    if isinstance(environment.runner, WorkerRunner):
        return
    environment.runner.send_message("caio_t0", {"t0": time.time() + START_DELAY_S})


def _on_t0(environment: Any, msg: Any, **_: Any) -> None:
    STATE.t0 = float(msg.data["t0"])
    STATE.t0_set.set()


@events.test_stop.add_listener
def _on_test_stop(**_: Any) -> None:
    _flush("test stop")


@events.quitting.add_listener
def _on_quitting(**_: Any) -> None:
    if STATE.peak is not None:
        STATE.peak.finish()
    _flush("quit")
    records = STATE.records
    if records is not None:
        lost = f", {len(records.rows)} NOT written" if records.rows else ""
        log.info("caio: worker %s wrote %d records in %d files%s",
                 records.worker, records.written, records.seq, lost)
    if STATE.hists is not None:
        lost = f", {len(STATE.hists.intervals)} NOT written" if STATE.hists.intervals else ""
        log.info("caio: worker %s wrote %d histogram lines in %d files%s",
                 STATE.hists.worker, STATE.hists.written, STATE.hists.seq, lost)
    if STATE.cpu is not None:
        lost = f", {len(STATE.cpu.rows)} NOT written" if STATE.cpu.rows else ""
        log.info("caio: worker %s wrote %d CPU samples in %d files%s",
                 STATE.cpu.worker, STATE.cpu.written, STATE.cpu.seq, lost)


class PredictUser(FastHttpUser):
    """One client: posts the payload's request bodies in turn to the predict URL."""

    wait_time = constant(0)
    network_timeout = 30.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        if not STATE.ready.wait(timeout=INIT_TIMEOUT_S):
            raise RuntimeError(f"caio: init did not load the payload within {INIT_TIMEOUT_S:.0f} s")
        cfg = STATE.cfg
        assert cfg is not None and STATE.bodies, "caio: init did not load the test config"
        self.url = cfg["predict_url"]
        self.label = f"predict:{cfg['signature']}"
        self.context_ = {"signature": cfg["signature"]}
        # users start at different bodies so they do not all send the same image at once
        self.index = next(STATE.users) % len(STATE.bodies)

    @task
    def predict(self) -> None:
        body = STATE.bodies[self.index]
        self.index = (self.index + 1) % len(STATE.bodies)
        headers = {"Content-Type": "application/json"}
        token = STATE.token.header if STATE.token is not None else None
        if token:
            headers["Authorization"] = token
        with self.client.post(self.url, data=body, headers=headers, name=self.label,
                              context=self.context_, catch_response=True) as response:
            _settle(response)


def _settle(response) -> None:
    """Mark a caught response: non-2xx and 2xx carrying ``error`` are failures."""
    if response.status_code == 0:
        return  # connection error or timeout: Locust already holds the exception
    error = caio_load.response_error(response.status_code, response.content)
    if error:
        response.failure(error)
    else:
        response.success()


class OpenRateUser(User):
    """open_rate: one per worker; its task runs the worker's request scheduler once."""

    wait_time = constant(1)

    def on_start(self) -> None:
        if not STATE.ready.wait(timeout=INIT_TIMEOUT_S):
            raise RuntimeError(f"caio: init did not load the payload within {INIT_TIMEOUT_S:.0f} s")

    @task
    def schedule(self) -> None:
        if STATE.scheduling:  # a second user on this worker: the schedule is not its to run
            return
        STATE.scheduling = True
        OpenLoop(self.environment, STATE.cfg).run()


class OpenLoop:
    """One worker's share of an open-loop schedule (see the module docstring)."""

    def __init__(self, environment: Any, cfg: dict[str, Any]):
        shape = cfg["shape"]
        self.environment = environment
        self.cfg = cfg
        self.shape = shape
        self.url = cfg["predict_url"]
        self.label = f"predict:{cfg['signature']}"
        self.context = {"signature": cfg["signature"]}
        timeout = float(cfg["request_timeout_s"])
        self.limiter = caio_schedule.InFlightLimiter(int(shape["max_in_flight"]))
        # one pool of max_in_flight connections: a request waiting on a stalled server holds
        # one connection, never the next send
        self.session = FastHttpSession(
            base_url=environment.host, request_event=environment.events.request, user=None,
            network_timeout=timeout, connection_timeout=timeout, max_retries=0,
            concurrency=int(shape["max_in_flight"]))
        self.sent_hist = caio_hdr.new_histogram()  # latency from the actual send

    def run(self) -> None:
        shape = self.shape
        seed = zlib.crc32(str(self.cfg.get("test_id", "")).encode())
        self.sent = 0
        log.info("caio: %s worker %d of %d: %.3f req/s total (%s), %s arrivals, at most %d "
                 "in flight", shape["kind"], STATE.worker_index, STATE.workers,
                 float(shape["rate"]), shape.get("rate_profile", "constant"),
                 shape["arrivals"], int(shape["max_in_flight"]))
        if shape["kind"] == "peak_search":
            self._run_peak_search(seed)
        else:
            self._walk(caio_schedule.profile_for(shape), seed, start_wall=self._shared_start())
        self._report()

    def _shared_start(self) -> float:
        """The master's common start time (wall clock), or now if it never came."""
        if not STATE.t0_set.wait(timeout=INIT_TIMEOUT_S) or STATE.t0 is None:
            log.warning("caio: no start time from the master; this worker starts now")
            return time.time()
        return STATE.t0

    def _run_peak_search(self, seed: int) -> None:
        """One constant-rate schedule per step, restarted whenever the master moves the
        search to another rate, until the duration budget is spent (or the test stops).
        Before each step the requests of the last one drain, and only then does the step's
        first window open: an overloaded step's backlog must not be billed to the next."""
        deadline = time.perf_counter() + float(self.shape["duration_s"])
        gevent.spawn(_window_loop, self.environment.runner, float(self.shape["window_s"]))
        timeout = float(self.cfg["request_timeout_s"])
        while time.perf_counter() < deadline:
            step, rate = STATE.step, STATE.rate
            self._drain(min(deadline, time.perf_counter() + timeout))
            STATE.step_started.set()
            profile = caio_schedule.constant_profile(rate, deadline - time.perf_counter())
            if not self._walk(profile, seed + step, step=step):
                return  # the schedule ran to the deadline

    def _drain(self, until_perf: float) -> None:
        started = time.perf_counter()
        while self.limiter.in_flight and time.perf_counter() < until_perf:
            gevent.sleep(0.02)
        waited = time.perf_counter() - started
        if waited > 0.5:
            log.info("caio: waited %.1f s for the last step's requests to finish (%d still "
                     "in flight)", waited, self.limiter.in_flight)

    def _walk(self, profile: caio_schedule.RateProfile, seed: int,
              step: int | None = None, start_wall: float | None = None) -> bool:
        """Send this worker's share of ``profile`` from ``start_wall`` (default now);
        ``step``: stop early (and return True) when the peak search moves on to another
        step."""
        times = caio_schedule.intended_times(
            profile, arrivals=self.shape["arrivals"], workers=STATE.workers,
            worker=STATE.worker_index, seed=seed)
        now_perf, now_wall = time.perf_counter(), time.time()
        t0_wall = now_wall if start_wall is None else start_wall
        t0_perf = now_perf + (t0_wall - now_wall)
        for offset in times:
            intended = t0_perf + offset
            if intended <= time.perf_counter():
                # behind schedule: let the sends already started run before starting more,
                # or they would pile up to max_in_flight unsent (dropped for the cap, not as
                # late, and timed from a send that waited on this loop)
                gevent.sleep(0)
            while (delay := intended - time.perf_counter()) > 0:
                # a peak-search step change must not wait out a long gap at a low rate
                gevent.sleep(delay if step is None else min(delay, STEP_POLL_S))
                if step is not None and STATE.step != step:
                    return True
            if step is not None and STATE.step != step:
                return True
            admission = self.limiter.admit(intended, time.perf_counter())
            if admission.started:
                gevent.spawn(self._send, intended, t0_wall + offset, self.sent)
            else:
                self._dropped(t0_wall + offset, admission)
            self.sent += 1
        return False

    def _send(self, intended_perf: float, intended_wall: float, n: int) -> None:
        body = STATE.bodies[n % len(STATE.bodies)]
        headers = {"Content-Type": "application/json"}
        token = STATE.token.header if STATE.token is not None else None
        if token:
            headers["Authorization"] = token
        try:
            with self.session.post(self.url, data=body, headers=headers, name=self.label,
                                   context=self.context, catch_response=True) as response:
                meta = response.request_meta
                sent_ms = meta.get("response_time")
                if sent_ms is not None:
                    caio_hdr.record_us(self.sent_hist, sent_ms)
                # what the request event (Locust's stats, raw records, histograms) reports
                meta["start_time"] = intended_wall
                meta["response_time"] = caio_schedule.latency_from_intended_ms(
                    intended_perf, time.perf_counter())
                _settle(response)
        finally:
            self.limiter.finish()

    def _dropped(self, intended_wall: float, admission: caio_schedule.Admission) -> None:
        why = (f"dropped: {self.limiter.max_in_flight} requests already in flight"
               if admission.outcome == caio_schedule.DROPPED_CAP
               else f"dropped: could not start within {self.limiter.drop_after_ms:.0f} ms "
                    f"(late by {admission.lateness_ms:.0f} ms)")
        if STATE.records is not None:
            STATE.records.add(ts=intended_wall, latency_ms=math.nan, ok=False, status_code=0,
                              signature=self.cfg["signature"], nbytes=0, error=why)
        if STATE.hists is not None:
            STATE.hists.add(intended_wall, self.cfg["signature"], None, False)
        if STATE.window is not None:
            STATE.window.add(None, False)

    def _report(self) -> None:
        counts = self.limiter.counts
        sent = self.sent_hist
        p99 = sent.get_value_at_percentile(99.0) / 1000.0 if sent.get_total_count() else 0.0
        log.info("caio: open_rate worker %d done: %s, max lateness %.1f ms; latency from the "
                 "actual send p99 %.1f ms over %d responses so far", STATE.worker_index,
                 ", ".join(f"{k} {v}" for k, v in counts.items()),
                 self.limiter.max_lateness_ms, p99, sent.get_total_count())


# ---------------------------------------------------------------- peak search


class PeakWindow:
    """A worker's measurements since its last window report: a latency histogram of the
    successful responses, requests and errors (dropped sends included)."""

    __slots__ = ("errors", "hist", "requests", "started")

    def __init__(self) -> None:
        self.hist = caio_hdr.new_histogram()
        self.requests = 0
        self.errors = 0
        self.started = time.time()

    def add(self, latency_ms: float | None, ok: bool) -> None:
        self.requests += 1
        if ok and latency_ms is not None:
            caio_hdr.record_us(self.hist, latency_ms)
        else:
            self.errors += 1

    def report(self, step: int, seq: int) -> dict[str, Any]:
        return {"step": step, "seq": seq, "worker": caio_load.worker_id(),
                "requests": self.requests, "errors": self.errors,
                "elapsed_s": max(time.time() - self.started, 1e-3),
                "hist": self.hist.encode().decode("ascii")}


def _window_loop(runner: Any, window_s: float) -> None:
    """Worker side: once the scheduler opens a step, send that step's measurements to the
    master every ``window_s`` until the master moves to another step."""
    while True:
        STATE.step_started.wait()
        STATE.step_started.clear()
        STATE.step_changed.clear()
        step, t0, seq = STATE.step, time.time(), 0
        STATE.window = PeakWindow()
        while not STATE.step_changed.wait(max(0.0, t0 + (seq + 1) * window_s - time.time())):
            window, STATE.window = STATE.window, PeakWindow()
            runner.send_message("caio_window", window.report(step, seq))
            seq += 1
        STATE.window = None  # between steps (while the last one drains) nothing counts


def _on_rate(environment: Any, msg: Any, **_: Any) -> None:
    """Worker side: the master moved the search to ``rate`` (all workers) at ``step``."""
    STATE.rate, STATE.step = float(msg.data["rate"]), int(msg.data["step"])
    STATE.step_changed.set()


def _init_peak_search(environment: Any, cfg: dict[str, Any]) -> None:
    runner = environment.runner
    STATE.rate = float(cfg["shape"]["rate"])
    if not isinstance(runner, WorkerRunner):
        STATE.peak = PeakMaster(environment, cfg)
        runner.register_message("caio_window", STATE.peak.on_window)
    if not isinstance(runner, MasterRunner):
        runner.register_message("caio_rate", _on_rate)


class PeakMaster:
    """Master side (or a standalone run): merges the workers' windows, feeds the
    ``caio_peak.PeakSearch`` controller, broadcasts each new rate, and writes the search's
    progress to ``<output_uri>/peak/search.json`` after every window."""

    def __init__(self, environment: Any, cfg: dict[str, Any]):
        shape = cfg["shape"]
        self.environment = environment
        self.search = caio_peak.search_from_shape(shape)
        self.window_s = float(shape["window_s"])
        self.collector = caio_peak.WindowCollector(STATE.workers)
        self.uri = caio_load.join(cfg["output_uri"], "peak", "search.json")
        self.windows: list[dict[str, Any]] = []
        self.done = False
        self.status, self.reason = "running", ""
        log.info("caio: peak search from %.3f req/s: p%g under %g ms, errors under %.2f%%, "
                 "precision %.0f%%, %g s windows", self.search.rate,
                 self.search.slo_percentile, self.search.slo_ms,
                 100 * self.search.max_error_rate, 100 * self.search.precision, self.window_s)

    def on_window(self, environment: Any, msg: Any, **_: Any) -> None:
        data = msg.data
        if self.done:
            return
        for seq, items in self.collector.add(int(data["step"]), int(data["seq"]),
                                             str(data["worker"]), data):
            self._judge(seq, items)
            if self.done or self.collector.step != data["step"]:
                break

    def _judge(self, seq: int, items: list[dict[str, Any]]) -> None:
        hist = caio_hdr.new_histogram()
        for item in items:
            hist.add(caio_hdr.HdrHistogram.decode(item["hist"]))
        requests = sum(int(i["requests"]) for i in items)
        errors = sum(int(i["errors"]) for i in items)
        elapsed = max(float(i["elapsed_s"]) for i in items)
        ok = hist.get_total_count()
        latency = (hist.get_value_at_percentile(self.search.slo_percentile) / 1000.0
                   if ok else math.inf)
        median = hist.get_value_at_percentile(50.0) / 1000.0 if ok else math.inf
        window = caio_peak.Window(throughput_rps=ok / elapsed, latency_ms=latency,
                                  requests=requests, errors=errors, median_ms=median)
        rate = self.search.rate
        decision = self.search.observe(window)
        self.windows.append({
            "step": self.collector.step, "seq": seq, "ts": time.time() - elapsed,
            "elapsed_s": elapsed,
            "rate": rate, "throughput_rps": window.throughput_rps,
            "latency_ms": latency if math.isfinite(latency) else None,
            "median_ms": median if math.isfinite(median) else None,
            "requests": requests, "errors": errors, "workers": len(items),
            "action": decision.action, "reason": decision.reason})
        log.info("caio: peak step %d at %.3g req/s, window %d: %.3g req/s, p%g %s, %d errors "
                 "of %d -> %s %s", self.collector.step, rate, seq, window.throughput_rps,
                 self.search.slo_percentile,
                 f"{latency:.1f} ms" if math.isfinite(latency) else "n/a", errors, requests,
                 decision.action, decision.reason)
        if decision.action == caio_peak.STEP:
            self.collector.start_step(self.collector.step + 1)  # the step is the collector's
            self.environment.runner.send_message(
                "caio_rate", {"step": self.collector.step, "rate": decision.rate})
        elif decision.action == caio_peak.DONE:
            self.done = True
            self.status, self.reason = "converged", decision.reason
            log.info("caio: peak search done: %.3g req/s sustained (%s)",
                     decision.rate, decision.reason)
        self._write()

    def finish(self) -> None:
        """At exit: a search cut short by the duration budget keeps its best rate so far."""
        if not self.done:
            self.done = True
            self.status = "budget"
            best = self.search.lo
            self.reason = (f"duration_s ran out before the search converged; highest rate "
                           f"that passed so far: {best:g} req/s" if best else
                           "duration_s ran out before any rate passed")
        self._write()

    def _write(self) -> None:
        report = caio_peak.search_report(self.search, self.windows, status=self.status,
                                         reason=self.reason, window_s=self.window_s)
        try:
            caio_load.write_uri(self.uri, json.dumps(report, indent=1).encode(),
                                "application/json")
        except Exception as exc:  # the next window writes it again
            log.error("caio: cannot write %s (%s: %s)", self.uri, type(exc).__name__, exc)


class ConfigShape(LoadTestShape):
    """Constant or staircase users, or one open-loop scheduler per worker, read from the
    test config (see ``shapes.py``); a peak search ends when its controller is done."""

    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        if STATE.cfg is None:
            return None
        if STATE.peak is not None and STATE.peak.done:
            return None
        shape = STATE.cfg["shape"]
        tick = shapes.tick(shape, self.get_run_time(), workers=STATE.workers)
        if tick is None:
            return None
        users = OpenRateUser if shape["kind"] in shapes.OPEN_LOOP else PredictUser
        return tick[0], tick[1], [users]
