"""Scaling records -> ``target_replicas`` rows, with literal numbers."""

from __future__ import annotations

import pandas as pd

from caio_operators.results import schema as sc
from caio_operators.results.scaling import scaling_timeseries, step_series


def events(*rows):
    return pd.DataFrame(rows, columns=["ts", "event", "from_replicas", "to_replicas",
                                       "reason"])


def test_step_series_holds_the_count_in_effect_at_each_interval_end():
    ev = events((100.2, "target", 0, 1, "start"), (103.5, "target", 1, 2, "up"),
                (106.0, "target", 2, 1, "down"))
    steps = step_series(ev, 1.0, 107.4)
    assert steps["ts"].tolist() == [100, 101, 102, 103, 104, 105, 106, 107]
    # the change at 103.5 shows in [103, 104); the one at 106.0 in [106, 107)
    assert steps["value"].tolist() == [1, 1, 1, 2, 2, 2, 1, 1]


def test_target_replicas_rows_ignore_ready_events():
    ev = events((10.0, "target", 0, 2, "start"), (10.0, "ready", 0, 2, "start"),
                (12.5, "ready", 2, 1, "replica 1 exited with status 1"))
    rows = scaling_timeseries("r1", ev, 2.0, 13.0)
    assert rows["metric"].unique().tolist() == [sc.TARGET_REPLICAS]
    assert rows["value"].tolist() == [2, 2]
    assert rows["ts"].tolist() == [pd.Timestamp(10, unit="s", tz="UTC"),
                                   pd.Timestamp(12, unit="s", tz="UTC")]
