"""One Locust process's caio state: the test config, the request bodies, where each request
is recorded, and the events an open-loop or peak-search test coordinates on.

One ``Context`` per process, made at init and kept on the Locust environment
(``environment.caio``): the listeners are its bound methods, and users, the shape and the
schedulers reach it through their environment, so no state lives in module globals.

Every request event lands in a per-second HDR histogram (exact-to-1% percentiles in bounded
memory whatever the run's length, closed or open loop), in the peak search's current window
when there is one, and, unless sampled out (``record_sample``; failures are all kept), as a
raw record. The buffers are flushed every ``flush_interval_s`` and when the test stops.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
from typing import Any

import gevent
import gevent.event

# isort: split
import caio_cloud
import caio_cpu
import caio_hdr
import caio_http
import caio_load

log = logging.getLogger("caio")

CPU_SAMPLE_S = 1.0  # a worker's CPU sampling period
USER_AGENT = "caio-bench"


class Context:
    """What this process loaded at init and what its requests go to (one test a process)."""

    def __init__(self, cfg: dict[str, Any], workers: int, worker_index: int) -> None:
        self.cfg = cfg
        self.workers, self.worker_index = workers, worker_index
        self.bodies: list[bytes] = []
        self.prepared: caio_http.Prepared | None = None  # the bodies' request heads
        self.users = itertools.count()  # users start at different bodies
        self.records: caio_load.RecordBuffer | None = None
        self.hists: caio_hdr.HistogramBuffer | None = None
        self.cpu: caio_cpu.CpuBuffer | None = None  # this process's CPU per second
        self.token: caio_cloud.TokenRefresher | None = None  # for Google API hosts
        # raw records of successful requests kept (failures are all kept)
        self.sample = 1.0
        self.sampler = random.Random(0)  # noqa: S311 - a sample, not a secret
        # Set once this worker has its request bodies. A worker is connected to the master
        # before its init runs, and reading a gs:// payload yields to other greenlets: the
        # master's spawn message can start users before init is done.
        self.ready = gevent.event.Event()
        # master side: the workers that said they are ready (caio_ready), and whether all
        # are; the shape's clock and the open-loop start wait for that (standalone: at once)
        self.ready_workers: set[str] = set()  # their node ids
        self.all_ready = gevent.event.Event()
        self.test_started = False  # master (or standalone): its test_start has fired
        self.t0_sent = False
        # open loop: the wall-clock start every worker's schedule counts from (the master's)
        self.t0: float | None = None
        self.t0_set = gevent.event.Event()
        self.scheduling = False  # this worker's open-loop scheduler has started
        # peak search, worker side: the step it sends at, the total rate (all workers) and
        # the window of measurements it is filling; master side (or standalone): the search
        self.step = 0
        self.rate = 0.0
        self.window: Any = None  # caio_peak_run.PeakWindow while a step's windows are open
        self.step_changed = gevent.event.Event()  # the master moved to another step
        self.step_started = gevent.event.Event()  # this worker's scheduler began sending it
        self.peak: Any = None  # caio_peak_run.PeakMaster

    @staticmethod
    def of(environment: Any) -> Context | None:
        return getattr(environment, "caio", None)

    @property
    def shape(self) -> dict[str, Any]:
        return self.cfg["shape"]

    # -- a worker (or standalone) process: the payload and where its requests go

    def load_worker(self) -> None:
        """Read the payload and open the buffers; raises what a bad payload raises."""
        cfg = self.cfg
        payload = json.loads(caio_load.read_uri(cfg["payload_uri"]))
        self.bodies = caio_load.request_bodies(cfg, payload)
        self.prepared = caio_http.Prepared(cfg["predict_url"], self.bodies, USER_AGENT)
        self.records = caio_load.RecordBuffer(cfg["output_uri"], caio_load.worker_id())
        worker = self.records.worker
        self.sample = float(cfg["record_sample"])
        self.sampler = random.Random(f"{cfg['test_id']}:{worker}")  # noqa: S311
        self.hists = caio_hdr.HistogramBuffer(cfg["output_uri"], worker)
        self.cpu = caio_cpu.CpuBuffer(cfg["output_uri"], worker)
        if caio_load.needs_google_auth(cfg["predict_url"]):
            self.token = caio_cloud.TokenRefresher()
            self.token.start()
        gevent.spawn(self._cpu_loop, self.cpu)
        gevent.spawn(self._flush_loop, float(cfg["flush_interval_s"]))
        self.ready.set()
        log.info("caio: worker %s ready: %d request bodies, records to %s", worker,
                 len(self.bodies), cfg["output_uri"])

    def bearer(self) -> str | None:
        """The Authorization header's value for a Google API host, else None."""
        return self.token.header if self.token is not None else None

    def client(self, request_event: Any, concurrency: int = 1) -> caio_http.PredictClient:
        """A client posting this worker's bodies to the predict URL over at most
        ``concurrency`` connections (one per closed-loop user; the open loop's
        ``max_in_flight``)."""
        cfg = self.cfg
        assert self.prepared is not None, "caio: init did not load the payload"
        return caio_http.PredictClient(
            cfg["predict_url"], self.prepared, request_event,
            name=caio_load.REQUEST_NAME_PREFIX + cfg["signature"],
            context={"signature": cfg["signature"]},
            timeout_s=float(cfg["request_timeout_s"]), concurrency=concurrency,
            token=self.bearer)

    def record(self, request_type: str, name: str, response_time: float,
               response_length: int, response: Any = None, context: dict | None = None,
               exception: Exception | None = None, start_time: float | None = None,
               **_: Any) -> None:
        """The ``request`` event listener: every request Locust times (see the docstring)."""
        if self.records is None:
            return
        status = getattr(response, "status_code", 0) or 0
        error = None
        if exception is not None:
            error = str(exception) if status else f"{type(exception).__name__}: {exception}"
        ts = start_time if start_time is not None else time.time() - response_time / 1000.0
        signature = (context or {}).get("signature", "")
        if self.hists is not None:
            self.hists.add(ts, signature, response_time, exception is None)
        if self.window is not None:
            self.window.add(response_time, exception is None)
        if exception is None and self.sample < 1.0 and self.sampler.random() >= self.sample:
            return  # not in the raw-record sample; the histograms count it
        self.records.add(ts=ts, latency_ms=response_time, ok=exception is None,
                         status_code=status, signature=signature,
                         nbytes=response_length or 0, error=error)

    def dropped(self, intended_wall: float, why: str) -> None:
        """An open-loop send that was never sent: a failure with no latency."""
        signature = self.cfg["signature"]
        if self.records is not None:
            self.records.add(ts=intended_wall, latency_ms=float("nan"), ok=False,
                             status_code=0, signature=signature, nbytes=0, error=why)
        if self.hists is not None:
            self.hists.add(intended_wall, signature, None, False)
        if self.window is not None:
            self.window.add(None, False)

    def flush(self, reason: str) -> None:
        for buffer in (self.records, self.hists, self.cpu):
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

    def log_totals(self) -> None:
        """At exit: what this process wrote, and anything it could not."""
        for what, buffer, pending in (
                ("records", self.records, lambda b: b.rows),
                ("histogram lines", self.hists, lambda b: b.intervals),
                ("CPU samples", self.cpu, lambda b: b.rows)):
            if buffer is not None:
                lost = f", {len(pending(buffer))} NOT written" if pending(buffer) else ""
                log.info("caio: worker %s wrote %d %s in %d files%s", buffer.worker,
                         buffer.written, what, buffer.seq, lost)

    def _cpu_loop(self, cpu: caio_cpu.CpuBuffer) -> None:
        # a late wake-up (a busy worker) only lengthens the window: CPU % divides by wall time
        while True:
            cpu.sample(time.time(), time.process_time())
            gevent.sleep(CPU_SAMPLE_S)

    def _flush_loop(self, interval_s: float) -> None:
        while True:
            gevent.sleep(interval_s)
            self.flush("interval")

