"""HdrHistogram latency histograms (caio_operators/results/hdr.py) against exact numpy
percentiles, with real encoded records in real files."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from caio_operators import storage
from caio_operators.layout import RunLayout
from caio_operators.results import hdr

QS = {"p50_ms": 50, "p90_ms": 90, "p95_ms": 95, "p99_ms": 99, "p999_ms": 99.9}


def lognormal_ms(n: int, seed: int) -> np.ndarray:
    # median ~25 ms with a long tail, like a model server
    return np.random.default_rng(seed).lognormal(mean=np.log(25.0), sigma=0.8, size=n)


def exact(values: np.ndarray) -> dict[str, float]:
    """Exact nearest-rank percentiles by sorting (rank rounded before ceil, as numpy's
    inverted_cdf would otherwise turn 99.9 / 100 * 1000 = 999.0000000000001 into 1000)."""
    ordered = np.sort(values)
    out = {k: float(ordered[int(np.ceil(round(q * len(values) / 100, 9))) - 1])
           for k, q in QS.items()}
    return out | {"max_ms": float(values.max()), "mean_ms": float(values.mean())}


@pytest.mark.parametrize("n", [1_000, 10_000, 100_000, 1_000_000])
def test_percentiles_are_within_one_percent_of_exact(n):
    values = lognormal_ms(n, seed=n)
    hist = hdr.new_histogram()
    hdr.record_many_ms(hist, values)
    got = hdr.percentiles_ms(hdr.decode(hdr.encode(hist)))
    assert got["count"] == n
    for key, want in exact(values).items():
        assert abs(got[key] - want) / want <= 0.01, (key, got[key], want)
        if key != "mean_ms":
            assert got[key] >= want * 0.9999  # the bucket's top: never below the truth


def test_record_ms_clamps_to_the_range_and_rounds_to_microseconds():
    hist = hdr.new_histogram()
    for ms in (0.0, 0.0004, 1.2344, 1.2346, 10 * 60_000 * 2):
        hdr.record_ms(hist, ms)
    assert hist.get_total_count() == 5
    assert hist.get_count_at_value(1) == 2  # 0 and 0.4 us both count as 1 us
    assert hist.get_max_value() >= 600_000_000 * 0.99
    empty = hdr.percentiles_ms(hdr.new_histogram())
    assert empty["count"] == 0 and np.isnan(empty["p99_ms"]) and np.isnan(empty["max_ms"])


def test_merging_workers_equals_the_histogram_of_the_union():
    a, b = lognormal_ms(20_000, 1), lognormal_ms(30_000, 2) * 3
    ha, hb, hu = hdr.new_histogram(), hdr.new_histogram(), hdr.new_histogram()
    hdr.record_many_ms(ha, a)
    hdr.record_many_ms(hb, b)
    hdr.record_many_ms(hu, np.concatenate([a, b]))
    merged = hdr.merge([hdr.decode(hdr.encode(ha)), hdr.decode(hdr.encode(hb))])
    assert merged.equals(hu)
    assert hdr.percentiles_ms(merged) == hdr.percentiles_ms(hu)


def test_an_encoded_histogram_of_a_million_values_is_small():
    hist = hdr.new_histogram()
    hdr.record_many_ms(hist, lognormal_ms(1_000_000, 3))
    size = len(hdr.encode(hist))
    print(f"encoded histogram of 1e6 lognormal latencies: {size} bytes")
    assert size < 10_000


def test_decode_names_a_corrupt_histogram():
    with pytest.raises(ValueError, match="not an encoded HdrHistogram"):
        hdr.decode("bm90IGEgaGlzdG9ncmFt")


def write_worker_files(bucket: str, rng: np.random.Generator) -> tuple[RunLayout, dict]:
    """Two workers, three 1 s intervals, two signatures, two files per worker; returns the
    raw values behind them by (interval, signature)."""
    layout = RunLayout(bucket, "hdr-run")
    raw: dict[tuple[float, str], list[np.ndarray]] = {}
    t0 = 1_700_000_000.0
    for worker in ("w0", "w1"):
        lines: list[str] = []
        for i in range(3):
            for sig, scale in (("serving_default", 1.0), ("serving_preprocess", 2.0)):
                values = rng.lognormal(np.log(20.0 * scale * (i + 1)), 0.5, size=500 + 100 * i)
                hist = hdr.new_histogram()
                hdr.record_many_ms(hist, values)
                raw.setdefault((t0 + i, sig), []).append(values)
                lines.append(hdr.record_line(ts=t0 + i, interval_s=1.0, worker=worker,
                                             signature=sig, ok=len(values), failed=i,
                                             hist=hist))
        for seq, chunk in enumerate((lines[:3], lines[3:])):
            uri = storage.join(hdr.histograms_dir(layout), f"worker-{worker}-{seq:06d}.jsonl")
            storage.write_text(uri, "\n".join(chunk) + "\n")
    return layout, raw


def test_reader_merges_files_into_interval_and_run_percentiles(bucket):
    layout, raw = write_worker_files(bucket, np.random.default_rng(5))
    frame, whole = hdr.read_run(layout, signature="serving_default")
    assert list(frame["ts"]) == [1_700_000_000.0, 1_700_000_001.0, 1_700_000_002.0]
    assert list(frame["workers"]) == [2, 2, 2]
    assert list(frame["ok"]) == [1000, 1200, 1400]
    assert list(frame["failed"]) == [0, 2, 4]
    assert list(frame["count"]) == [1000, 1200, 1400]
    for row in frame.itertuples():
        want = exact(np.concatenate(raw[(row.ts, "serving_default")]))
        for key in (*QS, "max_ms"):
            assert abs(getattr(row, key) - want[key]) / want[key] <= 0.01
    everything = np.concatenate([v for (_, sig), vs in raw.items() if sig == "serving_default"
                                 for v in vs])
    assert (whole["count"], whole["ok"], whole["failed"]) == (3600, 3600, 6)
    for key, want in exact(everything).items():
        assert abs(whole[key] - want) / want <= 0.01
    # all signatures together
    frame_all, whole_all = hdr.read_run(layout)
    assert list(frame_all["ok"]) == [2000, 2400, 2800]
    assert whole_all["count"] == 7200


def test_reader_of_a_run_without_histograms_is_empty_and_names_bad_lines(bucket):
    layout = RunLayout(bucket, "none")
    frame, whole = hdr.read_run(layout)
    assert frame.empty and list(frame.columns)[:3] == ["ts", "interval_s", "workers"]
    assert whole["count"] == 0 and np.isnan(whole["p99_ms"])
    bad = storage.join(hdr.histograms_dir(layout), "worker-w0-000000.jsonl")
    storage.write_text(bad, '{"ts": 1, "worker": "w0"}\n')
    with pytest.raises(ValueError, match=r"worker-w0-000000.jsonl line 1: .*lacks interval_s"):
        hdr.read_run(layout)


def test_an_hour_of_four_workers_encodes_and_merges_in_bounded_memory():
    """3,600 one-second intervals x 4 workers: print the cost (not asserted: shared machine)."""
    rng = np.random.default_rng(9)
    # a realistic per-interval histogram: 2,500 requests (10k req/s over 4 workers)
    hist = hdr.new_histogram()
    hdr.record_many_ms(hist, rng.lognormal(np.log(25.0), 0.8, size=2_500))
    tracemalloc.start()
    start = time.perf_counter()
    lines = [hdr.record_line(ts=1_700_000_000.0 + i, interval_s=1.0, worker=f"w{w}",
                             signature="serving_default", ok=2_500, failed=0, hist=hist)
             for i in range(3_600) for w in range(4)]
    encoded_s = time.perf_counter() - start
    start = time.perf_counter()
    frame, whole = hdr.summarize(hdr.parse_line(line) for line in lines)
    merged_s = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = sum(len(line) + 1 for line in lines)
    print(f"\n3600 intervals x 4 workers: encode {encoded_s:.1f} s, {size / 1e6:.1f} MB of "
          f"JSONL; parse+merge {merged_s:.1f} s; peak traced memory {peak / 1e6:.0f} MB")
    assert len(frame) == 3_600
    assert whole["count"] == 3_600 * 4 * 2_500
