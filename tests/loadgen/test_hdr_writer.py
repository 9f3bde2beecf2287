"""The locustfile's histogram writer (locust/caio_hdr.py) writes exactly the lines that
caio_operators.results.hdr writes and reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caio_operators import storage
from caio_operators.results import hdr


@pytest.fixture
def caio_hdr(caio_hdr_mod):
    return caio_hdr_mod


def test_lines_agree_with_the_reader_module(caio_hdr):
    latencies = np.random.default_rng(3).lognormal(np.log(20.0), 0.9, 5_000)
    theirs, ours = hdr.new_histogram(), caio_hdr.new_histogram()
    hdr.record_many_ms(theirs, latencies)
    for ms in latencies:
        caio_hdr.record_us(ours, float(ms))
    kw = {"ts": 1700000001, "interval_s": 1, "worker": "h-12", "signature": "serving_default",
          "ok": 5_000, "failed": 2}
    assert caio_hdr.record_line(**kw, hist=ours) == hdr.record_line(**kw, hist=theirs)
    assert (caio_hdr.LOWEST_US, caio_hdr.HIGHEST_US, caio_hdr.SIGNIFICANT_DIGITS) == (
        hdr.LOWEST_US, hdr.HIGHEST_US, hdr.SIGNIFICANT_DIGITS)
    for ms in (0.0, 0.0004, 1.2345, 1e9):  # clamping and rounding match too
        a, b = hdr.new_histogram(), caio_hdr.new_histogram()
        hdr.record_ms(a, ms)
        caio_hdr.record_us(b, ms)
        assert hdr.encode(a) == b.encode().decode()


def test_buffer_flushes_per_interval_files_that_the_reader_merges(caio_hdr, tmp_path):
    buffer = caio_hdr.HistogramBuffer(f"file://{tmp_path}", "w1")
    for i in range(100):
        buffer.add(1000.0 + i / 100, "serving_default", 10.0 + i, ok=True)  # 1000.xx s
    buffer.add(1001.5, "serving_default", None, ok=False)  # a dropped send
    first = buffer.flush()
    buffer.add(1000.999, "serving_default", 500.0, ok=True)  # late finisher, same interval
    second = buffer.flush()
    assert buffer.flush() is None and (buffer.seq, buffer.written) == (2, 3)
    assert first.endswith("/histograms/worker-w1-000000.jsonl")
    lines = storage.read_text(first).splitlines()
    assert [json.loads(line)["ts"] for line in lines] == [1000.0, 1001.0]
    frame, whole = hdr.summarize(hdr.read_records([first, second]))
    assert frame["ts"].tolist() == [1000.0, 1001.0]
    assert frame["ok"].tolist() == [101, 0] and frame["failed"].tolist() == [0, 1]
    assert whole["count"] == 101
    assert whole["max_ms"] == pytest.approx(500.0, rel=0.01)
    assert whole["p50_ms"] == pytest.approx(60.0, rel=0.01)
