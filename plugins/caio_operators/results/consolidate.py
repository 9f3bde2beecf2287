"""Raw records -> the three tidy tables (pure: DataFrames in, DataFrames out).

``meta`` carries what was known before harvest (see ``META_FIELDS``); the raw frames come
from :mod:`caio_operators.results.readers` (or a cloud harvester producing the same
columns). Any of them may be empty: a failed run still yields a ``runs`` row.

The Locust workers' own CPU (``worker_cpu``: ``ts,worker,cpu_percent`` per second) gives
the ``worker_cpu_pct`` series and the runs' ``max_worker_cpu_pct`` and
``generator_saturated``; a saturated generator makes a successful run ``degraded``, since
its latencies then describe the generator rather than the target.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from caio_operators.results import hdr, stats
from caio_operators.results import schema as sc

#: run fields taken from ``meta`` as they are (strings / ints)
META_STRINGS = ("dag_id", "target", "protocol", "model_name", "model_version",
                "model_source", "weights", "signature", "load_shape")
META_INTS = ("users", "workers", "replicas")
META_FIELDS = ("run_id", *META_STRINGS, *META_INTS, "status", "reason", "started_at",
               "ended_at", "provenance", "params", "harvested_at")

_TS_COLS = ["ts", "metric", "dimension", "value"]


def build_tables(meta: Mapping[str, Any], client: pd.DataFrame, server: pd.DataFrame,
                 samples: pd.DataFrame, locust_history: pd.DataFrame,
                 interval_s: float = sc.DEFAULT_INTERVAL_S, *,
                 worker_cpu: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Build ``runs``, ``timeseries`` and ``requests`` for one run, exactly per the schema.

    ``worker_cpu``: the Locust workers' CPU samples (``ts,worker,cpu_percent``), if any."""
    run_id = meta.get("run_id")
    if not run_id:
        raise ValueError("meta['run_id'] is required to build a run's tables")
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    client, server = _clean_records(client), _clean_records(server)
    server = _since(server, meta.get("started_at"))
    worker_cpu = _clean_worker_cpu(worker_cpu)
    requests = _requests_table(run_id, client, server)
    timeseries = _timeseries_table(run_id, client, server, samples, locust_history, interval_s,
                                   worker_cpu)
    runs = _runs_table(meta, client, server, samples, worker_cpu)
    return {
        "runs": sc.conform("runs", runs),
        "timeseries": sc.conform("timeseries", timeseries),
        "requests": sc.conform("requests", requests),
    }


# --- records ------------------------------------------------------------------------------

def _clean_records(df: pd.DataFrame) -> pd.DataFrame:
    """Drop rows without a start time; a missing ``ok`` counts as a failure."""
    if df.empty:
        return df
    out = df[df["ts"].notna()]
    return out.assign(ok=out["ok"].fillna(False).astype(bool))


def _since(server: pd.DataFrame, started_at: Any) -> pd.DataFrame:
    """The server records of this load: a retried load's server (deployed once) also
    recorded the requests of the killed try before it, which are not this run's."""
    started = to_utc_timestamp(started_at)
    if server.empty or started is None:
        return server
    return server[server["ts"].to_numpy(dtype=float) >= started.timestamp()]


def _clean_worker_cpu(df: pd.DataFrame | None) -> pd.DataFrame:
    """Samples with a time, a worker and a value (an empty frame when there are none)."""
    if df is None or df.empty:
        return pd.DataFrame({"ts": pd.Series([], dtype=float), "worker": pd.Series([], dtype=str),
                             "cpu_percent": pd.Series([], dtype=float)})
    return df[df["ts"].notna() & df["worker"].notna() & df["cpu_percent"].notna()]


def worker_name(value: Any) -> str:
    """A worker id -> its timeseries dimension 'worker-<id>'."""
    return f"worker-{value}"


def _utc(epoch_s: pd.Series | np.ndarray) -> pd.DatetimeIndex:
    micros = np.round(np.asarray(epoch_s, dtype=float) * 1e6).astype("int64")
    return pd.to_datetime(micros, unit="us", utc=True)


def replica_name(value: Any) -> str:
    """'3' -> 'replica-3'; names that are already labels pass through."""
    text = str(value)
    return f"replica-{text}" if text.isdigit() else text


def _nonempty_or_null(col: pd.Series) -> pd.Series:
    col = col.astype("str")
    return col.where(col.str.len() > 0)


def _requests_table(run_id: str, client: pd.DataFrame, server: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for source, df, origin in (("client", client, "worker"), ("server", server, "replica")):
        if df.empty:
            continue
        origins = df[origin].astype("str")
        if source == "server":
            origins = origins.map(replica_name, na_action="ignore")
        parts.append(pd.DataFrame({
            "run_id": run_id,
            "source": source,
            "ts": _utc(df["ts"]),
            "latency_ms": df["latency_ms"].to_numpy(dtype=float, na_value=np.nan),
            "ok": df["ok"].to_numpy(dtype=bool),
            "status_code": df["status_code"].astype("Int32").to_numpy(),
            "signature": df["signature"].astype("str").to_numpy(),
            "origin": origins.to_numpy(),
            "error": _nonempty_or_null(df["error"]).to_numpy(),
        }))
    if not parts:
        return sc.empty_frame("requests")
    return pd.concat(parts, ignore_index=True)


# --- timeseries ---------------------------------------------------------------------------

def _long(frame: pd.DataFrame, mapping: Mapping[str, str], dimension: str | pd.Series
          ) -> pd.DataFrame:
    """Wide per-interval frame -> long rows (ts, metric, dimension, value)."""
    parts = []
    for col, metric in mapping.items():
        parts.append(pd.DataFrame({"ts": frame["ts"].to_numpy(dtype=float), "metric": metric,
                                   "dimension": dimension, "value": frame[col].to_numpy(float)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=_TS_COLS)


def _client_series(client: pd.DataFrame, interval_s: float) -> list[pd.DataFrame]:
    if client.empty:
        return []
    mapping = {"p50_ms": sc.CLIENT_LATENCY_P50_MS, "p95_ms": sc.CLIENT_LATENCY_P95_MS,
               "p99_ms": sc.CLIENT_LATENCY_P99_MS, "request_rate_rps": sc.REQUEST_RATE_RPS,
               "failure_rate_rps": sc.FAILURE_RATE_RPS}
    out = [_long(stats.interval_stats(client, interval_s), mapping, sc.DIMENSION_ALL)]
    signatures = client["signature"].dropna().unique()
    if len(signatures) > 1:  # a mixed payload: also one series per signature
        for signature in sorted(signatures):
            part = client[client["signature"] == signature]
            out.append(_long(stats.interval_stats(part, interval_s), mapping, str(signature)))
    return out


def _server_series(server: pd.DataFrame, interval_s: float) -> list[pd.DataFrame]:
    if server.empty:
        return []
    mapping = {"p50_ms": sc.SERVER_LATENCY_P50_MS, "p95_ms": sc.SERVER_LATENCY_P95_MS,
               "p99_ms": sc.SERVER_LATENCY_P99_MS,
               "request_rate_rps": sc.SERVER_REQUEST_RATE_RPS}
    return [_long(stats.interval_stats(server, interval_s), mapping, sc.DIMENSION_ALL)]


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


def _timeseries_table(run_id: str, client, server, samples, history, interval_s: float,
                      worker_cpu: pd.DataFrame) -> pd.DataFrame:
    parts = [
        *_client_series(client, interval_s),
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
    return pd.DataFrame({"run_id": run_id, "ts": _utc(long["ts"]), "metric": long["metric"],
                         "dimension": long["dimension"].astype("str"),
                         "value": long["value"].astype(float)})


# --- latency from histograms -------------------------------------------------------------

#: client latency series that histograms (when a run has them) provide instead of raw records
HISTOGRAM_SERIES = {"p50_ms": sc.CLIENT_LATENCY_P50_MS, "p95_ms": sc.CLIENT_LATENCY_P95_MS,
                    "p99_ms": sc.CLIENT_LATENCY_P99_MS}
#: runs columns that histograms provide (``mean_ms`` stays the exact mean of the records)
HISTOGRAM_FIGURES = (*stats.SUMMARY_PERCENTILES, "max_ms")


def apply_histograms(tables: Mapping[str, pd.DataFrame],
                     records: Sequence[hdr.HistogramRecord],
                     interval_s: float = sc.DEFAULT_INTERVAL_S) -> dict[str, pd.DataFrame]:
    """``tables`` with the client latency percentiles taken from the workers' merged HDR
    histograms: the ``runs`` figures (p50..p999, max) and the per-interval
    ``client_latency_p*`` series (``all``, and per signature when there are several).

    Histograms hold every successful request of the run in bounded memory and merge
    exactly, so these are within 1% of the exact percentiles (never below them) whatever
    the run's length; counts, rates and errors still come from the raw records.
    ``interval_s`` must be a multiple of the histograms' interval (1 s) to be exact.
    """
    out = dict(tables)
    if not records:
        return out
    binned = [dataclasses.replace(r, ts=math.floor(r.ts / interval_s) * interval_s)
              for r in records]
    frame, whole = hdr.summarize(binned)
    runs = tables["runs"].copy()
    for name in HISTOGRAM_FIGURES:
        runs.at[0, name] = whole[name]
    out["runs"] = sc.conform("runs", runs)
    parts = [_long(frame, HISTOGRAM_SERIES, sc.DIMENSION_ALL)]
    signatures = sorted({r.signature for r in records})
    if len(signatures) > 1:
        parts += [_long(hdr.summarize(binned, sig)[0], HISTOGRAM_SERIES, sig)
                  for sig in signatures]
    series = pd.concat(parts, ignore_index=True)
    series = series[series["value"].notna()]
    run_id = str(runs.at[0, "run_id"])
    timeseries = tables["timeseries"]
    kept = timeseries[~timeseries["metric"].isin(list(HISTOGRAM_SERIES.values()))]
    added = pd.DataFrame({"run_id": run_id, "ts": _utc(series["ts"]),
                          "metric": series["metric"].astype("str"),
                          "dimension": series["dimension"].astype("str"),
                          "value": series["value"].astype(float)})
    nonempty = [df for df in (kept, added) if not df.empty]
    merged = pd.concat(nonempty, ignore_index=True) if nonempty else kept
    merged = merged.sort_values(["metric", "dimension", "ts"], kind="stable",
                                ignore_index=True)
    out["timeseries"] = sc.conform("timeseries", merged)
    return out


# --- runs ---------------------------------------------------------------------------------

def to_utc_timestamp(value: Any) -> pd.Timestamp | None:
    """Epoch seconds, ISO text, datetime or Timestamp -> a UTC Timestamp (None stays None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        return pd.Timestamp(_utc([float(value)])[0])
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _json(value: Any) -> str:
    return json.dumps(value or {}, sort_keys=True, default=str)


def _int_or_none(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _max_or_nan(df: pd.DataFrame, col: str) -> float:
    if df.empty:
        return math.nan
    values = df[col].to_numpy(dtype=float, na_value=np.nan)
    return float(np.nanmax(values)) if (~np.isnan(values)).any() else math.nan


def _status(meta: Mapping[str, Any], figures: Mapping[str, Any],
            client: pd.DataFrame) -> tuple[str, str]:
    status = meta.get("status") or "success"
    reason = meta.get("reason") or ""
    requests, failures = int(figures["requests"]), int(figures["failures"])
    if status not in sc.STATUSES:
        raise ValueError(f"meta['status'] is {status!r}; expected one of {sc.STATUSES}")
    if status == "success" and requests == 0:
        # a load stage that "succeeded" without a single recorded request measured nothing
        return "degraded", "no client requests were recorded"
    if status == "success" and failures == requests:
        # nothing was served: the figures describe errors, not the model
        errors = client["error"].dropna()
        common = errors.mode().iloc[0] if not errors.empty else "unknown"
        return "failed", f"all {requests} requests failed; most frequent error: {common}"
    return status, reason


def _during(samples: pd.DataFrame, started: pd.Timestamp | None,
            ended: pd.Timestamp | None) -> pd.DataFrame:
    """The samples whose window starts between the load's start and end (all of them when
    either is unknown): a worker idles before the load starts and after it stops, which
    would dilute its busy share."""
    if samples.empty or started is None or ended is None:
        return samples
    ts = samples["ts"].to_numpy(float)
    return samples[(ts >= started.timestamp()) & (ts < ended.timestamp())]


def generator_saturation(worker_cpu: pd.DataFrame) -> tuple[bool | None, str]:
    """``(saturated, reason)`` for the run from its workers' CPU samples: saturated when any
    worker was saturated (``stats.cpu_saturation``); the reason names the worker with the
    largest saturated share. ``(None, "")`` without samples."""
    if worker_cpu.empty:
        return None, ""
    verdicts = []
    for worker, part in worker_cpu.groupby("worker", sort=True):
        saturated, share, peak = stats.cpu_saturation(
            part["cpu_percent"].to_numpy(dtype=float, na_value=np.nan))
        verdicts.append((saturated, share, peak, str(worker)))
    saturated = [v for v in verdicts if v[0]]
    if not saturated:
        return False, ""
    _, share, peak, worker = max(saturated, key=lambda v: (v[1], v[2]))
    return True, (f"load generator saturated: worker {worker} at {peak:.0f}% CPU in "
                  f"{share:.0%} of the run; add workers")


def _runs_table(meta: Mapping[str, Any], client: pd.DataFrame, server: pd.DataFrame,
                samples: pd.DataFrame, worker_cpu: pd.DataFrame) -> pd.DataFrame:
    figures = stats.latency_summary(client)
    ok_server = server[server["ok"]] if not server.empty else server
    server_pct = stats.percentiles(
        ok_server["latency_ms"].to_numpy(dtype=float, na_value=np.nan)
        if not ok_server.empty else [], (50, 99))
    started, ended = to_utc_timestamp(meta.get("started_at")), to_utc_timestamp(
        meta.get("ended_at"))
    if not client.empty:  # fall back to what the records show
        ts = client["ts"].to_numpy(float)
        ends = ts + client["latency_ms"].to_numpy(dtype=float, na_value=0.0) / 1000.0
        started = started or to_utc_timestamp(float(ts.min()))
        ended = ended or to_utc_timestamp(float(np.nanmax(ends)))
    duration = (ended - started).total_seconds() if started is not None and ended is not None \
        else math.nan
    status, reason = _status(meta, figures, client)
    in_run = _during(worker_cpu, started, ended)
    generator_saturated, saturated_reason = generator_saturation(in_run)
    if generator_saturated:
        if status == "success":
            status, reason = "degraded", saturated_reason
        else:
            reason = f"{reason}; {saturated_reason}" if reason else saturated_reason
    harvested = to_utc_timestamp(meta.get("harvested_at")) or pd.Timestamp(
        dt.datetime.now(dt.UTC))
    row: dict[str, Any] = {"run_id": meta["run_id"], "status": status, "reason": reason}
    row.update({name: meta.get(name) for name in META_STRINGS})
    row.update({name: _int_or_none(meta.get(name)) for name in META_INTS})
    row.update({
        "started_at": started, "ended_at": ended, "duration_s": duration,
        **figures,
        "throughput_rps": stats.throughput_rps(client),
        "server_p50_ms": server_pct[50.0], "server_p99_ms": server_pct[99.0],
        "peak_cpu_pct": _max_or_nan(samples, "cpu_percent"),
        "peak_memory_mb": _max_or_nan(samples, "rss_mb"),
        "provenance": _json(meta.get("provenance")),
        "params": _json(meta.get("params")),
        "harvested_at": harvested,
        "max_worker_cpu_pct": _max_or_nan(in_run, "cpu_percent"),
        "generator_saturated": generator_saturated,
    })
    frame = pd.DataFrame([row])
    for col in ("started_at", "ended_at", "harvested_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame
