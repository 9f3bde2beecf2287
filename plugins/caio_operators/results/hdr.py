"""Latency histograms (HdrHistogram): exact merging, bounded memory, percentiles within 1%.

Raw per-request records give exact percentiles but grow with the run (an hour at 10k req/s
is 36M rows). A Locust worker instead records each interval's latencies into an
HdrHistogram (microseconds, 1 us to 10 min, 2 significant digits: every value lands in a
bucket at most 1/128 of its size wide, so a reported percentile is at most 0.8% above the
exact one) and writes it, compressed and base64-encoded, as one JSON line. Histograms with
the same layout add bucket by bucket, so merging workers and intervals loses nothing.

Record format, one line per (interval, worker, signature) in
``<run>/load/histograms/worker-<id>-<seq:06d>.jsonl``::

    {"ts": 1700000000.0, "interval_s": 1.0, "worker": "w1", "signature": "serving_default",
     "ok": 950, "failed": 3, "hist": "HISTFAAAA..."}

``ts`` is the interval start (epoch seconds), ``ok``/``failed`` count the requests completed
in it, and ``hist`` holds the latencies of the successful ones only, like
:mod:`caio_operators.results.stats` (a fast error would otherwise flatter a failing server).
Percentiles use the nearest-rank definition of that module too, resolved to the highest
value of the bucket holding that rank (never under-reporting a latency).
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from hdrh.histogram import HdrHistogram

from caio_operators import storage
from caio_operators.layout import RunLayout
from caio_operators.results.stats import SUMMARY_PERCENTILES

LOWEST_US = 1
HIGHEST_US = 600_000_000  # 10 minutes
SIGNIFICANT_DIGITS = 2
FIELDS = ("ts", "interval_s", "worker", "signature", "ok", "failed", "hist")
LATENCY_KEYS = (*SUMMARY_PERCENTILES, "max_ms", "mean_ms")


def new_histogram() -> HdrHistogram:
    """An empty histogram with the layout every writer and reader shares."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def _to_us(latency_ms: np.ndarray) -> np.ndarray:
    # clamp: a value out of range would raise in record_value and in add()
    return np.clip(np.rint(latency_ms * 1000.0), LOWEST_US, HIGHEST_US).astype(np.int64)


def record_ms(hist: HdrHistogram, latency_ms: float, count: int = 1) -> None:
    """Record one latency (ms); values outside 1 us..10 min are clamped to the range."""
    hist.record_value(int(_to_us(np.asarray([latency_ms], dtype=float))[0]), count)


def record_many_ms(hist: HdrHistogram, latencies_ms: Iterable[float]) -> None:
    """Record many latencies (ms) at once, one call per distinct microsecond value."""
    values = np.asarray(list(latencies_ms) if not isinstance(latencies_ms, np.ndarray)
                        else latencies_ms, dtype=float)
    values = values[~np.isnan(values)]
    distinct, counts = np.unique(_to_us(values), return_counts=True)
    for value, count in zip(distinct.tolist(), counts.tolist(), strict=True):
        hist.record_value(value, count)


def encode(hist: HdrHistogram) -> str:
    """Compressed, base64-encoded histogram (the HdrHistogram V2 wire format)."""
    return hist.encode().decode("ascii")


def decode(text: str) -> HdrHistogram:
    """The histogram :func:`encode` wrote (a ``ValueError`` names a corrupt one)."""
    try:
        return HdrHistogram.decode(text.encode("ascii"))
    except Exception as exc:  # hdrh raises several types for a bad blob
        raise ValueError(f"not an encoded HdrHistogram ({type(exc).__name__}: {exc})") from exc


def merge(hists: Iterable[HdrHistogram]) -> HdrHistogram:
    """One histogram holding every count of ``hists`` (exact: buckets add)."""
    out = new_histogram()
    for hist in hists:
        out.add(hist)
    return out


@functools.cache
def _bucket_values(counts_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(highest, median) equivalent value of every counts index of the shared layout, in us;
    hdrh computes these one Python call at a time, far too slowly for 3,600 intervals."""
    hist = new_histogram()
    if hist.counts_len != counts_len:
        raise ValueError(f"histogram has {counts_len} buckets, not the {hist.counts_len} of "
                         f"{LOWEST_US}..{HIGHEST_US} us at {SIGNIFICANT_DIGITS} digits")
    lowest = np.array([hist.get_value_from_index(i) for i in range(counts_len)], dtype=float)
    highest = np.array([hist.get_highest_equivalent_value(int(v)) for v in lowest], dtype=float)
    return highest, lowest + np.floor((highest - lowest + 1) / 2)


def percentiles_ms(hist: HdrHistogram) -> dict[str, float]:
    """``count``, ``p50_ms`` .. ``p999_ms``, ``max_ms``, ``mean_ms`` (NaN when empty)."""
    total = int(hist.get_total_count())
    out: dict[str, float] = {"count": total}
    if total == 0:
        return out | {key: math.nan for key in LATENCY_KEYS}
    counts = np.ctypeslib.as_array(hist.counts)[: hist.counts_len].astype(np.float64)
    highest, median = _bucket_values(hist.counts_len)
    cumulative = np.cumsum(counts)
    for key, q in SUMMARY_PERCENTILES.items():
        # nearest rank, as in stats.py; round first so 99.9 * 1000 / 100 stays 999
        rank = max(1, math.ceil(round(total * q / 100.0, 9)))
        out[key] = float(highest[int(np.searchsorted(cumulative, rank))]) / 1000.0
    out["max_ms"] = hist.get_max_value() / 1000.0
    out["mean_ms"] = float(counts @ median) / total / 1000.0
    return out


# --- records ------------------------------------------------------------------------------

@dataclass(frozen=True)
class HistogramRecord:
    """One line of a ``worker-<id>-<seq>.jsonl`` file (see the module docstring)."""

    ts: float
    interval_s: float
    worker: str
    signature: str
    ok: int
    failed: int
    hist: str


def histograms_dir(layout: RunLayout) -> str:
    """``<run>/load/histograms``."""
    return storage.join(layout.load_dir, "histograms")


def record_line(*, ts: float, interval_s: float, worker: str, signature: str, ok: int,
                failed: int, hist: HdrHistogram | str) -> str:
    """One JSONL line (no trailing newline) for an interval's histogram."""
    encoded = hist if isinstance(hist, str) else encode(hist)
    return json.dumps(asdict(HistogramRecord(float(ts), float(interval_s), str(worker),
                                             str(signature), int(ok), int(failed), encoded)),
                      separators=(",", ":"))


def parse_line(line: str) -> HistogramRecord:
    """The record on one JSONL line; ``ValueError`` names what is missing or malformed."""
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise ValueError(f"histogram line is a {type(doc).__name__}, not an object")
    missing = [f for f in FIELDS if f not in doc]
    if missing:
        raise ValueError(f"histogram line lacks {', '.join(missing)}")
    return HistogramRecord(float(doc["ts"]), float(doc["interval_s"]), str(doc["worker"]),
                           str(doc["signature"]), int(doc["ok"]), int(doc["failed"]),
                           str(doc["hist"]))


def read_records(uris: Iterable[str]) -> list[HistogramRecord]:
    """Every record in the given JSONL files (blank lines skipped)."""
    records = []
    for uri in uris:
        for number, line in enumerate(storage.read_text(uri).splitlines(), 1):
            if line.strip():
                try:
                    records.append(parse_line(line))
                except ValueError as exc:
                    raise ValueError(f"{uri} line {number}: {exc}") from exc
    return records


def summarize(records: Iterable[HistogramRecord], signature: str | None = None
              ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-interval percentiles (one row per interval start ``ts``, all workers merged) and
    whole-run percentiles, for one ``signature`` or all.

    Memory stays bounded by one interval's histograms plus the run's: records are grouped
    by ``ts`` while still encoded (a few hundred bytes each) and decoded one interval at a
    time into the running total.
    """
    by_ts: dict[float, list[HistogramRecord]] = defaultdict(list)
    for rec in records:
        if signature is None or rec.signature == signature:
            by_ts[rec.ts].append(rec)
    run = new_histogram()
    rows = []
    for ts in sorted(by_ts):
        group = by_ts[ts]
        hist = merge(decode(rec.hist) for rec in group)
        run.add(hist)
        rows.append({
            "ts": ts, "interval_s": max(rec.interval_s for rec in group),
            "workers": len({rec.worker for rec in group}),
            "ok": sum(rec.ok for rec in group), "failed": sum(rec.failed for rec in group),
            **percentiles_ms(hist)})
    columns = ["ts", "interval_s", "workers", "ok", "failed", "count", *LATENCY_KEYS]
    frame = pd.DataFrame(rows, columns=columns).astype(
        {"ts": "float64", "interval_s": "float64", "workers": "int64", "ok": "int64",
         "failed": "int64", "count": "int64", **dict.fromkeys(LATENCY_KEYS, "float64")})
    whole = percentiles_ms(run) | {"ok": int(frame["ok"].sum()),
                                   "failed": int(frame["failed"].sum())}
    return frame, whole


def read_run(layout: RunLayout, signature: str | None = None
             ) -> tuple[pd.DataFrame, dict[str, float]]:
    """:func:`summarize` of every histogram file a run's workers wrote."""
    return summarize(read_records(storage.list_files(histograms_dir(layout), ".jsonl")),
                     signature)
