"""Autoscaling, from a run's ``timeseries`` rows: how the replicas followed the load.

Pure functions on one grid (:func:`grid`: a row per interval, seconds since the run's first
interval). The questions and how each is answered:

- **load steps**: when the load rose. Closed loop: ``users`` rose. Open loop (constant
  users): the offered rate (requests started per second, a 3-interval rolling median
  against noise) rose by more than ``min_rise`` over the previous interval; consecutive
  rising intervals are one step, at its first.
- **scale-outs**: when ``target_replicas`` rose (the decision; local runs) and when
  ``replicas`` first reached the new count (the replicas serve). Runs without a target
  series (cloud runs before Monitoring has one) use the rise of ``replicas`` for both.
  Scale-ins likewise, downwards.
- **time to scale**: from the last load step at or before a scale-out's decision to its
  replicas serving.
- **latency around each scale-out**: the highest interval p99 (client side) in the
  ``window_s`` before the load step, from the step until the replicas serve, and in the
  ``window_s`` after (an interval's p99 cannot be pooled; the highest is what the unluckiest
  users saw).
- **replica-seconds** used (sum of ``replicas`` x interval) against the fewest that would
  have met the SLO: per interval ``ceil(achieved rate / capacity)`` (at least 1), where the
  capacity per replica is the best ``achieved / replicas`` of the intervals whose p99 met
  the SLO. The cost difference is the extra replica-hours at a replica's hourly price.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from caio_operators.results import schema as sc

GRID_METRICS = {
    "replicas": sc.REPLICAS, "target_replicas": sc.TARGET_REPLICAS, "users": sc.USERS,
    "offered_rps": sc.REQUEST_RATE_RPS, "failed_rps": sc.FAILURE_RATE_RPS,
    "p99_ms": sc.CLIENT_LATENCY_P99_MS,
}
DEFAULT_WINDOW_S = 10.0
DEFAULT_MIN_RISE = 0.25


def grid(timeseries: pd.DataFrame) -> pd.DataFrame:
    """One row per interval: ``t`` (s since the first), and the columns of ``GRID_METRICS``
    (dimension 'all'; NaN where absent) plus ``achieved_rps`` (offered minus failed)."""
    rows = timeseries[timeseries["dimension"] == sc.DIMENSION_ALL]
    rows = rows[rows["metric"].isin(list(GRID_METRICS.values()))]
    if rows.empty:
        return pd.DataFrame(columns=["t", *GRID_METRICS, "achieved_rps"])
    wide = rows.pivot_table(index="ts", columns="metric", values="value", aggfunc="last")
    wide = wide.reindex(columns=list(GRID_METRICS.values())).sort_index()
    wide.columns = list(GRID_METRICS)
    t0 = wide.index.min()
    out = wide.reset_index(drop=True)
    out.insert(0, "t", (wide.index - t0).total_seconds().to_numpy(float))
    out["achieved_rps"] = out["offered_rps"] - out["failed_rps"].fillna(0.0)
    return out


def interval_s(frame: pd.DataFrame) -> float:
    steps = np.diff(frame["t"].to_numpy(float))
    return float(np.min(steps[steps > 0])) if (steps > 0).any() else 1.0


def load_steps(frame: pd.DataFrame, min_rise: float = DEFAULT_MIN_RISE,
               open_loop: bool | None = None) -> list[float]:
    """Times (s) at which the load rose: ``users`` (closed loop), or the offered rate (open
    loop). ``open_loop`` None: open when users stayed the same all run."""
    users = frame["users"].dropna()
    if open_loop is None:
        open_loop = users.nunique() <= 1
    if not open_loop:
        t, load, threshold = frame["t"][users.index].to_numpy(), users.to_numpy(), 0.0
    else:
        offered = frame["offered_rps"].fillna(0.0).rolling(3, min_periods=1).median()
        t, load, threshold = frame["t"].to_numpy(), offered.to_numpy(), min_rise
    steps, rising = [], False
    for i in range(1, len(load)):
        rose = load[i] > load[i - 1] * (1 + threshold) and load[i] > 0
        if rose and not rising:
            steps.append(float(t[i]))
        rising = rose
    return steps


def scale_changes(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Every change of the target count: ``decided_s``, ``ready_s`` (when ``replicas``
    first reached it; None if never), ``from``, ``to``, ``direction`` ('out' or 'in')."""
    key = "target_replicas" if frame["target_replicas"].notna().any() else "replicas"
    target = frame[["t", key]].dropna()
    changes = []
    for prev, (_, row) in zip(target[key].to_numpy()[:-1], target.iloc[1:].iterrows(),
                              strict=True):
        if row[key] == prev:
            continue
        out = row[key] > prev
        later = frame[(frame["t"] >= row["t"]) & frame["replicas"].notna()]
        reached = later[later["replicas"] >= row[key]] if out else \
            later[later["replicas"] <= row[key]]
        changes.append({"decided_s": float(row["t"]),
                        "ready_s": float(reached["t"].iloc[0]) if not reached.empty else None,
                        "from": int(prev), "to": int(row[key]),
                        "direction": "out" if out else "in"})
    return changes


def _worst(frame: pd.DataFrame, start: float, end: float) -> float | None:
    values = frame[(frame["t"] >= start) & (frame["t"] < end)]["p99_ms"].dropna()
    return float(values.max()) if not values.empty else None


def scale_out_reactions(frame: pd.DataFrame, window_s: float = DEFAULT_WINDOW_S,
                        min_rise: float = DEFAULT_MIN_RISE, open_loop: bool | None = None
                        ) -> list[dict[str, Any]]:
    """Each scale-out with the load step it answered (the last at or before its decision),
    the time to scale and the worst p99 before, during and after it."""
    steps = load_steps(frame, min_rise, open_loop)
    step = interval_s(frame)
    out = []
    for change in scale_changes(frame):
        if change["direction"] != "out":
            continue
        answered = [s for s in steps if s <= change["decided_s"]]
        load_s = answered[-1] if answered else None
        start = load_s if load_s is not None else change["decided_s"]
        ready = change["ready_s"]
        end = ready + step if ready is not None else float(frame["t"].max()) + step
        out.append({
            **change, "load_step_s": load_s,
            "time_to_scale_s": (ready - load_s) if ready is not None and load_s is not None
            else None,
            "decision_delay_s": (change["decided_s"] - load_s) if load_s is not None else None,
            "p99_before_ms": _worst(frame, start - window_s, start),
            "p99_during_ms": _worst(frame, start, end),
            "p99_after_ms": _worst(frame, end, end + window_s),
        })
    return out


def replica_usage(frame: pd.DataFrame, slo_ms: float) -> dict[str, Any]:
    """Replica-seconds used and the fewest that would have met the SLO at the measured
    capacity per replica (None without an interval that met it under load)."""
    step = interval_s(frame)
    used = float(frame["replicas"].fillna(0.0).sum() * step)
    rows = frame.dropna(subset=["replicas", "achieved_rps"])
    rows = rows[rows["replicas"] > 0]
    good = rows[(rows["p99_ms"] <= slo_ms) & (rows["achieved_rps"] > 0)]
    capacity = float((good["achieved_rps"] / good["replicas"]).max()) if not good.empty \
        else None
    minimum = None
    if capacity:
        needed = np.maximum(1, np.ceil(rows["achieved_rps"].to_numpy(float) / capacity - 1e-9))
        minimum = float(needed.sum() * step)
    return {"replica_seconds": used, "min_replica_seconds": minimum,
            "capacity_rps_per_replica": capacity, "slo_ms": slo_ms}


def extra_cost(usage: Mapping[str, Any], price_per_replica_hour: float | None
               ) -> float | None:
    """What the replica-seconds above the minimum cost at ``price_per_replica_hour``."""
    if price_per_replica_hour is None or usage.get("min_replica_seconds") is None:
        return None
    extra = usage["replica_seconds"] - usage["min_replica_seconds"]
    return extra / 3600.0 * price_per_replica_hour


def scaled(frame: pd.DataFrame, min_rise: float = DEFAULT_MIN_RISE,
           open_loop: bool | None = None) -> bool:
    """Whether the run's replica count or load changed: the section is worth showing."""
    replicas = frame["replicas"].dropna()
    return replicas.nunique() > 1 or bool(scale_changes(frame)) or bool(
        load_steps(frame, min_rise, open_loop))


def autoscaling_summary(timeseries: pd.DataFrame, slo_ms: float,
                        price_per_replica_hour: float | None = None,
                        window_s: float = DEFAULT_WINDOW_S, open_loop: bool | None = None
                        ) -> dict[str, Any] | None:
    """The section's figures; None when neither replicas nor load changed. ``open_loop``:
    load steps from the offered rate, not users (None: guessed, see ``load_steps``)."""
    frame = grid(timeseries)
    if frame.empty or not scaled(frame, open_loop=open_loop):
        return None
    usage = replica_usage(frame, slo_ms)
    changes = scale_changes(frame)
    return {
        "load_steps_s": load_steps(frame, open_loop=open_loop),
        "scale_outs": scale_out_reactions(frame, window_s, open_loop=open_loop),
        "scale_ins": [c for c in changes if c["direction"] == "in"],
        **usage, "extra_cost": extra_cost(usage, price_per_replica_hour),
        "price_per_replica_hour": price_per_replica_hour,
        "max_replicas_seen": int(frame["replicas"].max()) if frame["replicas"].notna().any()
        else None,
    }


def fmt_seconds(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.0f} s"
