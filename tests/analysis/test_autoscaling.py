"""The autoscaling analysis, with literal numbers: a closed-loop spike and an open-loop
staircase on a 1-second grid."""

from __future__ import annotations

import pandas as pd
import pytest

from caio_operators.analysis import autoscaling as asc
from caio_operators.results import schema as sc

T0 = pd.Timestamp("2026-01-01T00:00:00Z")


def rows(**series):
    """timeseries rows from {metric: [value per second]} (None: no row)."""
    out = []
    for metric, values in series.items():
        for i, v in enumerate(values):
            if v is not None:
                out.append({"run_id": "r", "ts": T0 + pd.Timedelta(seconds=i),
                            "metric": metric, "dimension": sc.DIMENSION_ALL, "value": v})
    return pd.DataFrame(out)


# a spike: 2 users, 8 users from t=3 to t=9, then 2 again; the target goes 1 -> 3 at t=5,
# replicas serve at t=7 (2) and t=8 (3); scale-in to 1 decided at t=11, done at t=12
SPIKE = rows(**{
    sc.USERS: [2, 2, 2, 8, 8, 8, 8, 8, 8, 8, 2, 2, 2, 2],
    sc.TARGET_REPLICAS: [1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 1, 1, 1],
    sc.REPLICAS: [1, 1, 1, 1, 1, 1, 1, 2, 3, 3, 3, 3, 1, 1],
    sc.REQUEST_RATE_RPS: [10, 10, 10, 20, 20, 20, 20, 30, 40, 40, 10, 10, 10, 10],
    sc.FAILURE_RATE_RPS: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    sc.CLIENT_LATENCY_P99_MS: [50, 60, 55, 200, 400, 450, 500, 300, 80, 70, 50, 50, 50, 50],
})


def test_spike_scale_out_time_to_scale_and_latency():
    frame = asc.grid(SPIKE)
    assert asc.load_steps(frame) == [3.0]
    changes = asc.scale_changes(frame)
    assert [(c["direction"], c["from"], c["to"], c["decided_s"], c["ready_s"])
            for c in changes] == [("out", 1, 3, 5.0, 8.0), ("in", 3, 1, 11.0, 12.0)]
    (out,) = asc.scale_out_reactions(frame, window_s=3)
    assert out["load_step_s"] == 3.0
    assert out["decision_delay_s"] == 2.0
    assert out["time_to_scale_s"] == 5.0  # step at 3, all 3 replicas serve at 8
    assert out["p99_before_ms"] == 60  # t 0..2
    assert out["p99_during_ms"] == 500  # t 3..8
    assert out["p99_after_ms"] == 70  # t 9..11


def test_replica_seconds_against_the_minimum_and_the_cost():
    frame = asc.grid(SPIKE)
    usage = asc.replica_usage(frame, slo_ms=100)
    # capacity: intervals meeting 100 ms: 10/1 (t0-2, t10-11), 40/3 (t8, t9), 10/3 (t10),
    # 10/1 (t12, t13) -> best 40/3 = 13.33 req/s per replica
    assert usage["capacity_rps_per_replica"] == pytest.approx(40 / 3)
    assert usage["replica_seconds"] == 1 * 7 + 2 + 3 * 4 + 1 * 2 - 0  # 23
    # needed: 10 -> 1 (x7 intervals: t0-2, t10-13), 20 -> 2 (x4), 30 -> 3, 40 -> 3 (x2)
    assert usage["min_replica_seconds"] == 7 * 1 + 4 * 2 + 3 + 2 * 3  # 24
    assert asc.extra_cost(usage, 3.6) == pytest.approx((23 - 24) / 3600 * 3.6)


def test_open_loop_staircase_steps_come_from_the_offered_rate():
    ts = rows(**{
        sc.USERS: [4] * 12,
        sc.REQUEST_RATE_RPS: [10, 10, 10, 10, 20, 20, 20, 20, 30, 30, 30, 30],
        sc.REPLICAS: [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3],
        sc.CLIENT_LATENCY_P99_MS: [40] * 12,
    })
    frame = asc.grid(ts)
    # the rolling median turns 10 -> 20 at t=5, 20 -> 30 at t=9
    assert asc.load_steps(frame) == [5.0, 9.0]
    # no target series (a cloud run): replicas' own rises are the scale-outs
    reactions = asc.scale_out_reactions(frame)
    assert [(r["decided_s"], r["load_step_s"], r["time_to_scale_s"]) for r in reactions] == [
        (6.0, 5.0, 1.0), (11.0, 9.0, 2.0)]


def test_a_steady_fixed_run_has_no_section():
    steady = rows(**{sc.USERS: [4] * 5, sc.REPLICAS: [2] * 5, sc.TARGET_REPLICAS: [2] * 5,
                     sc.REQUEST_RATE_RPS: [10, 11, 10, 9, 10],
                     sc.CLIENT_LATENCY_P99_MS: [40] * 5})
    assert asc.autoscaling_summary(steady, slo_ms=500) is None
    summary = asc.autoscaling_summary(SPIKE, slo_ms=100, price_per_replica_hour=3.6)
    assert summary["max_replicas_seen"] == 3 and len(summary["scale_outs"]) == 1
    assert summary["scale_ins"][0]["ready_s"] == 12.0


def test_report_section_shows_the_scale_out_and_its_time():
    from caio_operators.analysis.autoscaling_report import section_for_run

    section = section_for_run(SPIKE, {"slo_ms": 100, "machine_type": "n1-standard-4"})
    page = section.html
    assert "<h2 id='autoscaling'>Autoscaling</h2>" in page
    replicas, load, p99 = section.charts  # each placed in the section, each with its data
    assert all(f"id='chart-{c.key}'" in page for c in section.charts)
    assert [s.label for s in replicas.series] == ["replicas", "target replicas"]
    assert [y for y in replicas.series[0].y if y is not None][:4] == [1, 1, 1, 1]
    assert max(replicas.series[0].y) == 3 and [s.label for s in p99.series] == ["p99 ms"]
    assert replicas.caption == "scale-outs: 1->3 from 3 s to 8 s" and load.series
    # 1 -> 3: step at 3 s, decided at 5 s, serving at 8 s, 5 s to scale, p99 60/500/...
    assert "<td>1 &rarr; 3</td><td>3</td><td>5</td><td>8</td><td>5</td><td>60</td>" \
           "<td>500</td>" in page
    assert "<td>3 &rarr; 1</td><td>11</td><td>12</td>" in page
    assert "per replica-hour" in page  # n1-standard-4 is in the bundled price table
    steady = rows(**{sc.USERS: [4] * 5, sc.REPLICAS: [2] * 5,
                     sc.REQUEST_RATE_RPS: [10] * 5, sc.CLIENT_LATENCY_P99_MS: [40] * 5})
    assert section_for_run(steady, {"slo_ms": 100}) is None
