"""One worker's share of an open-loop schedule (``open_rate``, and each step of a
``peak_search``): the sends happen at their intended times whatever the server does.

The scheduler walks the worker's share of the intended send times
(``caio_schedule.intended_times``), sleeps until each, admits it through an
``InFlightLimiter`` (``max_in_flight``) and hands it to an idle sender greenlet (a new one
when none is idle: ``Senders``) on one ``caio_http.PredictClient`` whose pool holds
``max_in_flight`` connections, so a stalled server never delays the next send. The request
event it fires carries ``start_time`` = the intended send time and ``response_time`` =
latency from the intended send time, so Locust's stats and the raw records are open-loop
figures; the latency from the actual send is kept in a histogram and logged at the end. A
send that cannot start on time (in-flight cap reached, or more than 1 s late) is not sent:
it is recorded as a dropped failure.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

import gevent
from gevent.hub import Waiter

# isort: split
import caio_hdr
import caio_peak_run
import caio_schedule
from caio_context import Context

log = logging.getLogger("caio")

INIT_TIMEOUT_S = 120.0  # how long a scheduler waits for the master's start time
YIELD_EVERY = 8  # behind schedule, the loop yields to the started sends every this many sends
STEP_POLL_S = 0.1  # how often a peak_search scheduler waiting for its next send checks the step


class Senders:
    """The greenlets that send: a send goes to an idle one when there is one, else to a new
    one, so there are never more than the sends in flight at once (``max_in_flight``, which
    the limiter enforces) and never fewer than needed: a send never waits for a sender.
    Handing a send to a waiting greenlet (a hub callback and a switch, as ``spawn`` starts
    a new greenlet) saves creating a greenlet per request: 7% of the open loop's CPU at
    saturation (py-spy, bench/README.md)."""

    def __init__(self, send: Callable[..., None]) -> None:
        self.send = send
        self.hub = gevent.get_hub()
        self.idle: list[Waiter] = []

    def submit(self, args: tuple) -> None:
        """Start ``send(*args)`` in the next turn of the hub, as ``gevent.spawn`` would."""
        if self.idle:
            self.hub.loop.run_callback(self.idle.pop().switch, args)
        else:
            gevent.spawn(self._run, args)

    def _run(self, args: tuple) -> None:
        while True:
            self.send(*args)
            waiter = Waiter(self.hub)
            self.idle.append(waiter)
            args = waiter.get()


class OpenLoop:
    """One worker's share of an open-loop schedule (see the module docstring)."""

    def __init__(self, environment: Any, ctx: Context):
        cfg = ctx.cfg
        shape = cfg["shape"]
        self.environment = environment
        self.ctx = ctx
        self.shape = shape
        self.limiter = caio_schedule.InFlightLimiter(int(shape["max_in_flight"]))
        # one pool of max_in_flight connections: a request waiting on a stalled server holds
        # one connection, never the next send
        self.client = ctx.client(environment.events.request, int(shape["max_in_flight"]))
        self.count = len(ctx.bodies)
        self.senders = Senders(self._send)
        self.sent_hist = caio_hdr.new_histogram()  # latency from the actual send
        self.sent = 0

    def run(self) -> None:
        shape, ctx = self.shape, self.ctx
        seed = zlib.crc32(str(ctx.cfg.get("test_id", "")).encode())
        log.info("caio: %s worker %d of %d: %.3f req/s total (%s), %s arrivals, at most %d "
                 "in flight", shape["kind"], ctx.worker_index, ctx.workers,
                 float(shape["rate"]), shape.get("rate_profile", "constant"),
                 shape["arrivals"], int(shape["max_in_flight"]))
        if shape["kind"] == "peak_search":
            self._run_peak_search(seed)
        else:
            self._walk(caio_schedule.profile_for(shape), seed, start_wall=self._shared_start())
        self._report()

    def _shared_start(self) -> float:
        """The master's common start time (wall clock), or now if it never came."""
        if not self.ctx.t0_set.wait(timeout=INIT_TIMEOUT_S) or self.ctx.t0 is None:
            log.warning("caio: no start time from the master; this worker starts now")
            return time.time()
        return self.ctx.t0

    def _run_peak_search(self, seed: int) -> None:
        """One constant-rate schedule per step, restarted whenever the master moves the
        search to another rate, until the duration budget is spent (or the test stops).
        Before each step the requests of the last one drain, and only then does the step's
        first window open: an overloaded step's backlog must not be billed to the next."""
        ctx = self.ctx
        deadline = time.perf_counter() + float(self.shape["duration_s"])
        gevent.spawn(caio_peak_run.window_loop, self.environment.runner, ctx,
                     float(self.shape["window_s"]))
        timeout = float(ctx.cfg["request_timeout_s"])
        while time.perf_counter() < deadline:
            step, rate = ctx.step, ctx.rate
            self._drain(min(deadline, time.perf_counter() + timeout))
            ctx.step_started.set()
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
        ctx = self.ctx
        times = caio_schedule.intended_times(
            profile, arrivals=self.shape["arrivals"], workers=ctx.workers,
            worker=ctx.worker_index, seed=seed)
        now_perf, now_wall = time.perf_counter(), time.time()
        t0_wall = now_wall if start_wall is None else start_wall
        t0_perf = now_perf + (t0_wall - now_wall)
        behind = 0
        for offset in times:
            intended = t0_perf + offset
            if intended <= time.perf_counter() and (behind := behind + 1) % YIELD_EVERY == 0:
                # behind schedule: let the sends already started run before starting more,
                # or they would pile up to max_in_flight unsent (dropped for the cap, not as
                # late, and timed from a send that waited on this loop); not after every one:
                # each yield is a turn of the hub (an epoll call), which at 7,000 req/s made
                # the loop fall behind for good (bench/loadgen.py: 6,587 sent, 794 ms late at
                # worst; every 8th: 7,005 sent, 40 ms)
                gevent.sleep(0)
            while (delay := intended - time.perf_counter()) > 0:
                # a peak-search step change must not wait out a long gap at a low rate
                gevent.sleep(delay if step is None else min(delay, STEP_POLL_S))
                if step is not None and ctx.step != step:
                    return True
            if step is not None and ctx.step != step:
                return True
            admission = self.limiter.admit(intended, time.perf_counter())
            if admission.started:
                self.senders.submit((intended, t0_wall + offset, self.sent))
            else:
                self._dropped(t0_wall + offset, admission)
            self.sent += 1
        return False

    def _send(self, intended_perf: float, intended_wall: float, n: int) -> None:
        try:
            # the request event (Locust's stats, raw records, histograms) reports the
            # latency from the intended send; the one from the actual send goes here
            sent_ms = self.client.post(n % self.count, start_time=intended_wall,
                                       intended_perf=intended_perf)
            if sent_ms is not None:
                caio_hdr.record_us(self.sent_hist, sent_ms)
        finally:
            self.limiter.finish()

    def _dropped(self, intended_wall: float, admission: caio_schedule.Admission) -> None:
        why = (f"dropped: {self.limiter.max_in_flight} requests already in flight"
               if admission.outcome == caio_schedule.DROPPED_CAP
               else f"dropped: could not start within {self.limiter.drop_after_ms:.0f} ms "
                    f"(late by {admission.lateness_ms:.0f} ms)")
        self.ctx.dropped(intended_wall, why)

    def _report(self) -> None:
        counts = self.limiter.counts
        sent = self.sent_hist
        p99 = sent.get_value_at_percentile(99.0) / 1000.0 if sent.get_total_count() else 0.0
        log.info("caio: open_rate worker %d done: %s, max lateness %.1f ms; latency from the "
                 "actual send p99 %.1f ms over %d responses so far", self.ctx.worker_index,
                 ", ".join(f"{k} {v}" for k, v in counts.items()),
                 self.limiter.max_lateness_ms, p99, sent.get_total_count())
