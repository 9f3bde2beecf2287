"""One worker's latency histograms, one per (1 s interval, signature), written as JSONL
chunks (no locust or gevent import: tests load this by path; hdrh and stdlib only).

The line format and histogram layout are those of ``caio_operators.results.hdr`` (which
reads and merges them; the locustfile cannot import it): 1 us .. 10 min, 2 significant
digits, latencies rounded to microseconds and clamped to that range, successful requests'
latencies only, ``ok``/``failed`` counting requests by the interval their ``ts`` falls in.
Files are ``<output_uri>/histograms/worker-<id>-<seq:06d>.jsonl``, each written whole
(like the raw records); the reader merges lines with the same ``ts`` from any file.
"""

from __future__ import annotations

import json
import math

import caio_load
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 600_000_000  # 10 minutes
SIGNIFICANT_DIGITS = 2


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def to_us(latency_ms: float) -> int:
    """Microseconds, rounded half to even and clamped, as ``hdr._to_us`` does."""
    return min(max(round(latency_ms * 1000.0), LOWEST_US), HIGHEST_US)


def record_us(hist: HdrHistogram, latency_ms: float) -> None:
    """Record one latency given in ms."""
    hist.record_value(to_us(latency_ms))


def record_line(*, ts: float, interval_s: float, worker: str, signature: str, ok: int,
                failed: int, hist: HdrHistogram) -> str:
    """The JSONL line ``caio_operators.results.hdr.record_line`` writes for the same data."""
    return json.dumps({"ts": float(ts), "interval_s": float(interval_s), "worker": str(worker),
                       "signature": str(signature), "ok": int(ok), "failed": int(failed),
                       "hist": hist.encode().decode("ascii")}, separators=(",", ":"))


class _Interval:
    __slots__ = ("failed", "hist", "ok")

    def __init__(self) -> None:
        self.hist = new_histogram()
        self.ok = 0
        self.failed = 0


class HistogramBuffer:
    """Histograms since the last flush, keyed by (interval start, signature); memory is a
    few KB per key whatever the rate. A failed write keeps them for the next flush."""

    def __init__(self, output_uri: str, worker: str, interval_s: float = 1.0):
        self.output_uri = output_uri
        self.worker = worker
        self.interval_s = float(interval_s)
        self.intervals: dict[tuple[float, str], _Interval] = {}
        self.seq = 0
        self.written = 0  # lines

    def add(self, ts: float, signature: str, latency_ms: float | None, ok: bool) -> None:
        start = math.floor(ts / self.interval_s) * self.interval_s
        entry = self.intervals.get((start, signature))
        if entry is None:
            entry = self.intervals[(start, signature)] = _Interval()
        if ok and latency_ms is not None and not math.isnan(latency_ms):
            entry.ok += 1
            record_us(entry.hist, latency_ms)
        else:
            entry.failed += 1

    def lines(self, intervals: dict[tuple[float, str], _Interval]) -> list[str]:
        return [record_line(ts=ts, interval_s=self.interval_s, worker=self.worker,
                            signature=signature, ok=e.ok, failed=e.failed, hist=e.hist)
                for (ts, signature), e in sorted(intervals.items())]

    def flush(self) -> str | None:
        """Write the held histograms to a new file; return its URI (None when empty)."""
        held, self.intervals = self.intervals, {}  # swap first: requests keep landing
        if not held:
            return None
        uri = caio_load.join(self.output_uri, "histograms",
                             f"worker-{self.worker}-{self.seq:06d}.jsonl")
        lines = self.lines(held)
        try:
            caio_load.write_uri(uri, ("\n".join(lines) + "\n").encode("utf-8"),
                                "application/x-ndjson")
        except BaseException:
            for key, entry in held.items():  # back in, merged with what came meanwhile
                now = self.intervals.setdefault(key, _Interval())
                now.hist.add(entry.hist)
                now.ok += entry.ok
                now.failed += entry.failed
            raise
        self.seq += 1
        self.written += len(lines)
        return uri
