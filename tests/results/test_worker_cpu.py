"""Locust workers' CPU: read from the files the workers write, consolidated into the
worker_cpu_pct series and the runs' saturation flag, checked on literal numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from caio_testing import load_locust_module
from raw_run import write_csv

from caio_operators import storage
from caio_operators.results import readers, stats
from caio_operators.results import schema as sc
from caio_operators.results.consolidate import build_tables
from caio_operators.results.harvest import harvest_run
from caio_operators.results.warehouse import open_warehouse

HEADER = "ts,worker,cpu_percent"
CALM = "1000.200,w1,40.0\n1001.200,w1,60.0\n1002.200,w1,50.0\n1003.200,w1,45.0\n"
# 3 of 4 seconds at >= 90%: 75% of the run, more than 10%
BUSY = "1000.300,w2,92.0\n1001.300,w2,97.0\n1002.300,w2,88.0\n1003.300,w2,91.0\n"
SATURATED_REASON = "load generator saturated: worker w2 at 97% CPU in 75% of the run; add workers"


def write_workers(layout, **files: str) -> None:
    for name, body in files.items():
        write_csv(storage.join(readers.worker_cpu_dir(layout), f"worker-{name}-000000.csv"),
                  HEADER, body)


def tables_of(layout, meta, interval_s=1.0):
    raw = readers.read_run_inputs(layout)
    return build_tables(meta, raw.client, raw.server, raw.samples, raw.locust_history,
                        interval_s=interval_s, worker_cpu=raw.worker_cpu)


def series(ts_table, metric, dimension):
    rows = ts_table[(ts_table["metric"] == metric) & (ts_table["dimension"] == dimension)]
    seconds = rows["ts"].astype("int64") // 10**6
    return dict(zip(seconds.tolist(), rows["value"].tolist(), strict=True))


def test_reader_reads_what_the_worker_buffer_writes_and_nothing_when_absent(small_run):
    assert readers.read_run_inputs(small_run).worker_cpu.empty
    assert list(readers.read_worker_cpu(readers.worker_cpu_dir(small_run)).columns) == [
        "ts", "worker", "cpu_percent"]
    buffer = load_locust_module("caio_cpu").CpuBuffer(small_run.load_dir, "host-9")
    for wall, cpu in ((100.0, 1.0), (101.0, 1.5), (102.0, 2.45)):
        buffer.sample(wall, cpu)
    buffer.flush()
    frame = readers.read_run_inputs(small_run).worker_cpu
    assert frame.to_dict("list") == {"ts": [100.0, 101.0], "worker": ["host-9", "host-9"],
                                     "cpu_percent": [50.0, 95.0]}


def test_saturated_worker_flags_and_degrades_a_successful_run(small_run, meta):
    write_workers(small_run, w1=CALM, w2=BUSY)
    tables = tables_of(small_run, meta)
    run = tables["runs"].iloc[0]
    assert run["max_worker_cpu_pct"] == 97.0
    assert run["generator_saturated"] == True  # noqa: E712 (a numpy/pandas bool)
    assert (run["status"], run["reason"]) == ("degraded", SATURATED_REASON)
    ts = tables["timeseries"]
    assert series(ts, sc.WORKER_CPU_PCT, "worker-w1") == {1000: 40.0, 1001: 60.0, 1002: 50.0,
                                                          1003: 45.0}
    assert series(ts, sc.WORKER_CPU_PCT, "worker-w2") == {1000: 92.0, 1001: 97.0, 1002: 88.0,
                                                          1003: 91.0}
    two_s = tables_of(small_run, meta, interval_s=2.0)["timeseries"]
    assert series(two_s, sc.WORKER_CPU_PCT, "worker-w1") == {1000: 50.0, 1002: 47.5}
    for name, frame in tables.items():
        sc.validate(name, frame)


def test_only_seconds_of_the_load_count(small_run, meta):
    # the run is [1000, 1004): idle seconds before it would dilute the share, and a busy
    # second after it (shutdown) is not load
    idle = "".join(f"{990 + s}.300,w2,2.0\n" for s in range(10))
    write_workers(small_run, w2=idle + BUSY + "1004.300,w2,100.0\n")
    tables = tables_of(small_run, meta)
    run = tables["runs"].iloc[0]
    assert (run["max_worker_cpu_pct"], run["reason"]) == (97.0, SATURATED_REASON)
    # the series keeps every second the worker reported
    assert len(series(tables["timeseries"], sc.WORKER_CPU_PCT, "worker-w2")) == 15


def test_calm_workers_leave_the_run_alone(small_run, meta):
    write_workers(small_run, w1=CALM)
    run = tables_of(small_run, meta)["runs"].iloc[0]
    assert (run["max_worker_cpu_pct"], bool(run["generator_saturated"])) == (60.0, False)
    assert (run["status"], run["reason"]) == ("success", "")


def test_without_samples_the_flag_is_unknown(small_run, meta):
    run = tables_of(small_run, meta)["runs"].iloc[0]
    assert math.isnan(run["max_worker_cpu_pct"]) and run["generator_saturated"] is pd.NA
    assert run["status"] == "success"


def test_a_failed_run_keeps_its_status_and_gains_the_reason(small_run, meta):
    write_workers(small_run, w2=BUSY)
    run = tables_of(small_run, {**meta, "status": "failed", "reason": "load stage timed out"}
                    )["runs"].iloc[0]
    assert (run["status"], run["reason"]) == ("failed",
                                              f"load stage timed out; {SATURATED_REASON}")


def test_exactly_the_allowed_share_is_not_saturated():
    # 1 window of 10 at 90%: 10% is not more than 10%; 2 of 10 is
    assert stats.cpu_saturation([90.0] + [40.0] * 9) == (False, 0.1, 90.0)
    assert stats.cpu_saturation([95.0, 99.0] + [40.0] * 8) == (True, 0.2, 99.0)
    saturated, share, peak = stats.cpu_saturation([])
    assert (saturated, share, math.isnan(peak)) == (False, 0.0, True)


@pytest.mark.parametrize("samples", [
    # (wall s, process CPU s) as a worker samples them
    [(0.0, 0.0), (1.0, 0.9), (2.0, 1.3), (3.0, 1.7), (4.0, 2.1), (5.0, 2.5), (6.0, 2.9),
     (7.0, 3.3), (8.0, 3.7), (9.0, 4.1), (10.0, 4.5)],  # one window at exactly 90%: 10%
    [(0.0, 0.0), (1.0, 0.95), (2.5, 2.4), (3.5, 2.5), (3.5, 2.5), (4.5, 3.49)],
    [(0.0, 10.0), (1.0, 10.2), (2.0, 10.4)],
    [(0.0, 0.0)],
])
def test_the_plugin_rule_agrees_with_the_workers_rule(samples):
    cpu = load_locust_module("caio_cpu")
    percents = cpu.cpu_percent(samples)
    theirs = cpu.saturation(percents)
    ours = stats.cpu_saturation(percents)
    assert ours[:2] == (theirs.saturated, theirs.share)
    assert (stats.SATURATED_CPU_PCT, stats.MAX_SATURATED_SHARE) == (
        cpu.SATURATED_PERCENT, cpu.MAX_SATURATED_SHARE)


def test_harvest_stores_the_flag(small_run, meta, warehouse_uri):
    write_workers(small_run, w1=CALM, w2=BUSY)
    result = harvest_run(small_run, meta, warehouse_uri)
    assert result["figures"]["generator_saturated"] is True
    assert result["figures"]["max_worker_cpu_pct"] == 97.0
    assert (result["figures"]["status"], result["figures"]["reason"]) == (
        "degraded", SATURATED_REASON)
    stored = open_warehouse(warehouse_uri).query(
        "SELECT generator_saturated, max_worker_cpu_pct FROM runs WHERE run_id = 'run-1'")
    assert stored.iloc[0].tolist() == [True, 97.0]
