"""The ``timeseries`` table of one run from its records and samples (pure: DataFrames in,
DataFrames out). ``consolidate.build_tables`` calls it; ``histogram_tables`` replaces its
client latency series with the histograms'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from caio_operators.results import schema as sc
from caio_operators.results import stats

TS_COLS = ["ts", "metric", "dimension", "value"]


def worker_name(value: Any) -> str:
    """A worker id -> its timeseries dimension 'worker-<id>'."""
    return f"worker-{value}"


def utc_index(epoch_s: pd.Series | np.ndarray) -> pd.DatetimeIndex:
    """Epoch seconds -> UTC timestamps, to the microsecond."""
    micros = np.round(np.asarray(epoch_s, dtype=float) * 1e6).astype("int64")
    return pd.to_datetime(micros, unit="us", utc=True)


def replica_name(value: Any) -> str:
    """'3' -> 'replica-3'; names that are already labels pass through."""
    text = str(value)
    return f"replica-{text}" if text.isdigit() else text


def long_rows(frame: pd.DataFrame, mapping: Mapping[str, str], dimension: str | pd.Series
              ) -> pd.DataFrame:
    """Wide per-interval frame -> long rows (ts, metric, dimension, value)."""
    parts = []
    for col, metric in mapping.items():
        parts.append(pd.DataFrame({"ts": frame["ts"].to_numpy(dtype=float), "metric": metric,
                                   "dimension": dimension, "value": frame[col].to_numpy(float)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TS_COLS)


def _client_series(client: pd.DataFrame, interval_s: float) -> list[pd.DataFrame]:
    if client.empty:
        return []
    mapping = {"p50_ms": sc.CLIENT_LATENCY_P50_MS, "p95_ms": sc.CLIENT_LATENCY_P95_MS,
               "p99_ms": sc.CLIENT_LATENCY_P99_MS, "request_rate_rps": sc.REQUEST_RATE_RPS,
               "failure_rate_rps": sc.FAILURE_RATE_RPS}
    out = [long_rows(stats.interval_stats(client, interval_s), mapping, sc.DIMENSION_ALL)]
    signatures = client["signature"].dropna().unique()
    if len(signatures) > 1:  # a mixed payload: also one series per signature
        for signature in sorted(signatures):
            part = client[client["signature"] == signature]
            out.append(long_rows(stats.interval_stats(part, interval_s), mapping, str(signature)))
    return out


def _goodput_series(client: pd.DataFrame, slo_ms: float | None, interval_s: float
                    ) -> list[pd.DataFrame]:
    if client.empty or slo_ms is None:
        return []
    return [long_rows(stats.interval_goodput(client, slo_ms, interval_s),
                  {"goodput_rps": sc.GOODPUT_RPS}, sc.DIMENSION_ALL)]


#: the open-loop generator's error text of a send it dropped (locust/caio_openloop.py)
DROPPED_PREFIX = "dropped:"
#: ... and of one dropped because max_in_flight requests were already in flight
DROPPED_CAP_TEXT = "already in flight"


def _dropped_series(client: pd.DataFrame, interval_s: float) -> list[pd.DataFrame]:
    """Sends an open-loop generator dropped, per interval of their intended send time and
    per cause; nothing when none was dropped (closed-loop runs never drop)."""
    if client.empty:
        return []
    errors = client["error"]
    dropped = _text_mask(errors, lambda text: text.str.startswith(DROPPED_PREFIX, na=False))
    if not dropped.any():
        return []
    cap = _text_mask(errors, lambda text: text.str.contains(DROPPED_CAP_TEXT, regex=False,
                                                            na=False))
    out = []
    for dimension, mask in (("late", dropped & ~cap), ("in_flight_cap", dropped & cap)):
        if mask.any():
            # every interval from the first request to the last, zero where none dropped
            counts = stats.interval_stats(client.assign(ok=~mask), interval_s)
            out.append(long_rows(counts, {"failure_rate_rps": sc.DROPPED_RPS}, dimension))
    return out


def _text_mask(values: pd.Series, test: Callable[[pd.Series], pd.Series]) -> np.ndarray:
    """``test`` (text Series -> bool Series, False for missing) of each value; on a
    categorical's few categories rather than its millions of rows."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        per_category = test(pd.Series(values.cat.categories).astype("string")).to_numpy(bool)
        codes = values.cat.codes.to_numpy()
        return np.where(codes >= 0, per_category[codes], False) if per_category.size \
            else np.zeros(codes.size, dtype=bool)
    return test(values.astype("string")).to_numpy(bool)


def _server_series(server: pd.DataFrame, interval_s: float) -> list[pd.DataFrame]:
    if server.empty:
        return []
    mapping = {"p50_ms": sc.SERVER_LATENCY_P50_MS, "p95_ms": sc.SERVER_LATENCY_P95_MS,
               "p99_ms": sc.SERVER_LATENCY_P99_MS,
               "request_rate_rps": sc.SERVER_REQUEST_RATE_RPS}
    return [long_rows(stats.interval_stats(server, interval_s), mapping, sc.DIMENSION_ALL)]


def _sample_series(samples: pd.DataFrame, interval_s: float) -> list[pd.DataFrame]:
    if samples.empty:
        return []
    samples = samples[samples["ts"].notna()].assign(
        replica=samples["replica"].map(replica_name, na_action="ignore"))
    out = []
    for value, metric in (("cpu_percent", sc.CPU_UTILIZATION_PCT),
                          ("rss_mb", sc.MEMORY_MB)):
        agg = stats.interval_aggregate(samples, value, interval_s, by="replica", how="mean")
        out.append(pd.DataFrame({"ts": agg["ts"], "metric": metric,
                                 "dimension": agg["replica"], "value": agg["value"]}))
    bins = np.floor(samples["ts"].to_numpy(float) / interval_s) * interval_s
    replicas = samples.assign(ts=bins).groupby("ts")["replica"].nunique().reset_index()
    out.append(pd.DataFrame({"ts": replicas["ts"], "metric": sc.REPLICAS,
                             "dimension": sc.DIMENSION_ALL,
                             "value": replicas["replica"].astype(float)}))
    return out


def _worker_series(worker_cpu: pd.DataFrame, interval_s: float) -> list[pd.DataFrame]:
    if worker_cpu.empty:
        return []
    agg = stats.interval_aggregate(worker_cpu, "cpu_percent", interval_s, by="worker",
                                   how="mean")
    return [pd.DataFrame({"ts": agg["ts"], "metric": sc.WORKER_CPU_PCT,
                          "dimension": agg["worker"].map(worker_name), "value": agg["value"]})]


def _users_series(history: pd.DataFrame, interval_s: float) -> list[pd.DataFrame]:
    if history.empty:
        return []
    rows = history[history["name"] == "Aggregated"] if "name" in history else history
    rows = rows[rows["ts"].notna() & rows["users"].notna()].sort_values("ts", kind="stable")
    if rows.empty:
        return []
    agg = stats.interval_aggregate(rows, "users", interval_s, how="last")
    return [pd.DataFrame({"ts": agg["ts"], "metric": sc.USERS, "dimension": sc.DIMENSION_ALL,
                          "value": agg["value"]})]


def timeseries_table(run_id: str, client, server, samples, history, interval_s: float,
                     worker_cpu: pd.DataFrame, slo_ms: float | None = None) -> pd.DataFrame:
    parts = [
        *_client_series(client, interval_s),
        *_goodput_series(client, slo_ms, interval_s),
        *_dropped_series(client, interval_s),
        *_server_series(server, interval_s),
        *_sample_series(samples, interval_s),
        *_users_series(history, interval_s),
        *_worker_series(worker_cpu, interval_s),
    ]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return sc.empty_frame("timeseries")
    long = pd.concat(parts, ignore_index=True)
    long = long[long["value"].notna()]  # an idle interval has no latency: unknown, not zero
    long = long.sort_values(["metric", "dimension", "ts"], kind="stable", ignore_index=True)
    return pd.DataFrame({"run_id": run_id, "ts": utc_index(long["ts"]), "metric": long["metric"],
                         "dimension": long["dimension"].astype("str"),
                         "value": long["value"].astype(float)})
