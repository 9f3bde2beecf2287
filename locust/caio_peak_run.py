"""The peak search at run time, over Locust's custom messages (the controller itself is the
pure ``caio_peak``).

Each worker sends the master a report every ``window_s`` (``caio_window``: requests,
errors incl. dropped sends, an HDR histogram of its latencies); the master (``PeakMaster``,
or the standalone process) merges each window across workers
(``caio_peak.WindowCollector``), feeds ``caio_peak.PeakSearch``, broadcasts the next rate
(``caio_rate``), writes ``<output_uri>/peak/search.json`` after every window, and ends the
test when the search is done.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from locust.runners import MasterRunner, WorkerRunner

# isort: split
import caio_hdr
import caio_load
import caio_peak
from caio_context import Context

log = logging.getLogger("caio")


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


def window_loop(runner: Any, ctx: Context, window_s: float) -> None:
    """Worker side: once the scheduler opens a step, send that step's measurements to the
    master every ``window_s`` until the master moves to another step."""
    while True:
        ctx.step_started.wait()
        ctx.step_started.clear()
        ctx.step_changed.clear()
        step, t0, seq = ctx.step, time.time(), 0
        ctx.window = PeakWindow()
        while not ctx.step_changed.wait(max(0.0, t0 + (seq + 1) * window_s - time.time())):
            window, ctx.window = ctx.window, PeakWindow()
            runner.send_message("caio_window", window.report(step, seq))
            seq += 1
        ctx.window = None  # between steps (while the last one drains) nothing counts


def init_peak_search(environment: Any, ctx: Context) -> None:
    """Register the messages of this process's side of the search."""
    runner = environment.runner
    ctx.rate = float(ctx.shape["rate"])
    if not isinstance(runner, WorkerRunner):
        ctx.peak = PeakMaster(environment, ctx)
        runner.register_message("caio_window", ctx.peak.on_window)
    if not isinstance(runner, MasterRunner):
        def on_rate(environment: Any, msg: Any, **_: Any) -> None:
            """The master moved the search to ``rate`` (all workers) at ``step``."""
            ctx.rate, ctx.step = float(msg.data["rate"]), int(msg.data["step"])
            ctx.step_changed.set()

        runner.register_message("caio_rate", on_rate)


class PeakMaster:
    """Master side (or a standalone run): merges the workers' windows, feeds the
    ``caio_peak.PeakSearch`` controller, broadcasts each new rate, and writes the search's
    progress to ``<output_uri>/peak/search.json`` after every window."""

    def __init__(self, environment: Any, ctx: Context):
        shape = ctx.shape
        self.environment = environment
        self.search = caio_peak.search_from_shape(shape)
        self.window_s = float(shape["window_s"])
        self.collector = caio_peak.WindowCollector(ctx.workers)
        self.uri = caio_load.join(ctx.cfg["output_uri"], "peak", "search.json")
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
