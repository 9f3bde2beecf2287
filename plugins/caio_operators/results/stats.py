"""Pure statistics on raw request records: exact percentiles, interval bins, throughput.

Percentile method: **nearest rank** (Hyndman & Fan type 1, numpy ``inverted_cdf``). The
p-th percentile of n sorted values is the value at rank ``ceil(p/100 * n)`` (1-based),
i.e. the smallest observed latency such that at least p % of requests took no longer.
Every reported percentile is therefore a latency that really happened; nothing is
interpolated or rounded (unlike Locust's own bucketed percentiles).

Latency percentiles use successful requests only (``ok``); failures are counted
separately, because a fast error would otherwise make a failing server look quick.

Records are DataFrames with at least ``ts`` (epoch seconds float, or UTC datetimes),
``latency_ms`` and ``ok``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

#: runs-table column -> percentile
SUMMARY_PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p95_ms": 95.0, "p99_ms": 99.0,
                       "p999_ms": 99.9}
INTERVAL_PERCENTILES = (50.0, 95.0, 99.0)
STEADY_TRIM_FRACTION = 0.1
#: a load generator window at or above this CPU % of one core counts as saturated ...
SATURATED_CPU_PCT = 90.0
#: ... and a worker with more than this share of such windows saturated the run
MAX_SATURATED_SHARE = 0.10


def nearest_rank(q: float, n: np.ndarray | int) -> np.ndarray:
    """The 1-based nearest rank of percentile ``q`` among ``n`` values (1 when n is 0)."""
    # round before ceil so that e.g. 99.9 * 1000 / 100 = 999.0000000000001 stays 999
    rank = np.ceil(np.round(np.asarray(n, dtype=float) * q / 100.0, 9)).astype(np.int64)
    return np.clip(rank, 1, np.maximum(np.asarray(n, dtype=np.int64), 1))


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 90, 95, 99, 99.9)
                ) -> dict[float, float]:
    """Nearest-rank percentiles of ``values`` (NaN when there are none)."""
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray | pd.Series)
                     else values, dtype=float)
    for q in qs:
        if not 0 < q <= 100:
            raise ValueError(f"percentile {q} is outside (0, 100]")
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return {float(q): math.nan for q in qs}
    # a partial sort puts exactly the value of each rank in place: O(n), not a full sort
    kth = sorted({int(k) - 1 for k in (nearest_rank(q, arr.size) for q in qs)})
    part = np.partition(arr, kth)
    return {float(q): float(part[nearest_rank(q, arr.size) - 1]) for q in qs}


def epoch_seconds(ts: pd.Series) -> np.ndarray:
    """``ts`` as float epoch seconds, whether given as numbers or datetimes."""
    if isinstance(ts.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(ts):
        as_utc = pd.to_datetime(ts, utc=True)
        return as_utc.astype("datetime64[us, UTC]").astype("int64").to_numpy() / 1e6
    return ts.to_numpy(dtype=float, na_value=np.nan)


def _ok_mask(records: pd.DataFrame) -> np.ndarray:
    return records["ok"].fillna(False).to_numpy(dtype=bool)


def latency_summary(records: pd.DataFrame) -> dict[str, float | int]:
    """Counts, error rate and latency figures of a set of records (runs-table names)."""
    n = len(records)
    ok = _ok_mask(records) if n else np.zeros(0, dtype=bool)
    failures = int(n - ok.sum())
    lat = records["latency_ms"].to_numpy(dtype=float, na_value=np.nan)[ok] if n else np.zeros(0)
    lat = lat[~np.isnan(lat)]
    pct = percentiles(lat, tuple(SUMMARY_PERCENTILES.values()))
    out: dict[str, float | int] = {
        "requests": n,
        "failures": failures,
        "error_rate": failures / n if n else math.nan,
    }
    out.update({name: pct[q] for name, q in SUMMARY_PERCENTILES.items()})
    out["max_ms"] = float(lat.max()) if lat.size else math.nan
    out["mean_ms"] = float(lat.mean()) if lat.size else math.nan
    return out


def _bins(ts: np.ndarray, interval_s: float) -> np.ndarray:
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    quotient = ts / interval_s
    return np.floor(quotient, out=quotient).astype(np.int64)


def _full_range(bins: np.ndarray) -> np.ndarray:
    return np.arange(bins.min(), bins.max() + 1, dtype=np.int64) if bins.size else bins


def interval_stats(records: pd.DataFrame, interval_s: float = 1.0,
                   qs: Sequence[float] = INTERVAL_PERCENTILES) -> pd.DataFrame:
    """Per-interval request counts, rates and latency percentiles.

    Intervals are aligned to multiples of ``interval_s`` on the epoch (so client, server
    and sample series line up) and keyed by request start. Every interval between the
    first and the last request appears, an idle one with zero counts and NaN latencies.
    Columns: ``ts`` (interval start, epoch s), ``requests``, ``failures``,
    ``request_rate_rps``, ``failure_rate_rps``, ``p<q>_ms`` for each q (e.g. ``p50_ms``).
    """
    pct_cols = [_pct_name(q) for q in qs]
    cols = ["ts", "requests", "failures", "request_rate_rps", "failure_rate_rps", *pct_cols]
    if records.empty:
        return pd.DataFrame({c: pd.Series([], dtype="int64" if c in ("requests", "failures")
                                          else "float64") for c in cols})
    ts = epoch_seconds(records["ts"])
    ok = _ok_mask(records)
    lat = records["latency_ms"].to_numpy(dtype=float, na_value=np.nan)
    keep = ~np.isnan(ts)
    if not keep.all():  # copies of millions of values only when some must go
        ts, ok, lat = ts[keep], ok[keep], lat[keep]
    del keep
    bins = _bins(ts, interval_s)
    all_bins = _full_range(bins)
    offset = all_bins[0] if all_bins.size else 0
    bins -= offset
    requests = np.bincount(bins, minlength=all_bins.size)
    failures = np.bincount(bins[~ok], minlength=all_bins.size)
    out = pd.DataFrame({
        "ts": all_bins * interval_s,
        "requests": requests.astype("int64"),
        "failures": failures.astype("int64"),
        "request_rate_rps": requests / interval_s,
        "failure_rate_rps": failures / interval_s,
    })
    good = ok & ~np.isnan(lat)
    good_bins, good_lat = bins[good], lat[good]
    del ts, ok, lat, bins, good  # millions of values each: gone before the sort
    for q, values in zip(qs, _binned_percentiles(good_bins, good_lat, qs,
                                                  all_bins.size), strict=True):
        out[_pct_name(q)] = values
    return out


def _pct_name(q: float) -> str:
    return f"p{q:g}".replace(".", "") + "_ms"


def _binned_percentiles(bins: np.ndarray, values: np.ndarray, qs: Sequence[float],
                        size: int) -> list[np.ndarray]:
    """Nearest-rank percentiles of ``values`` per bin index in [0, size); NaN when empty."""
    results = [np.full(size, np.nan) for _ in qs]
    if bins.size == 0:
        return results
    # group by bin with a stable counting-style sort (radix for up to 65536 bins), then a
    # partial sort per bin: exact like sorting (bin, value) pairs, several times faster;
    # the groups' bounds come from the bins' counts (no sorted copy of the bins)
    per_bin = np.bincount(bins, minlength=size)
    present = np.flatnonzero(per_bin)
    counts = per_bin[present]
    key = bins.astype(np.uint16) if size <= 1 << 16 else bins
    v = values[np.argsort(key, kind="stable")]
    del key
    ends = np.cumsum(counts)
    starts = ends - counts
    ranks = [nearest_rank(q, counts) - 1 for q in qs]
    for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        kth = [int(r[i]) for r in ranks]
        part = np.partition(v[start:end], sorted(set(kth)))
        for res, k in zip(results, kth, strict=True):
            res[present[i]] = part[k]
    return results


def interval_aggregate(df: pd.DataFrame, value: str, interval_s: float = 1.0,
                       by: str | None = None, how: str = "mean") -> pd.DataFrame:
    """Aggregate a sampled ``value`` per interval (and per ``by`` group): mean, max or last.

    Returns columns ``ts`` (interval start, epoch s), ``by`` (when given) and ``value``.
    Only intervals that hold samples appear: a missing sample is unknown, not zero.
    """
    if how not in ("mean", "max", "last"):
        raise ValueError(f"how must be 'mean', 'max' or 'last', got {how!r}")
    keys = ["ts", by] if by else ["ts"]
    if df.empty:
        return pd.DataFrame({k: pd.Series([], dtype="float64" if k == "ts" else "str")
                             for k in keys} | {"value": pd.Series([], dtype="float64")})
    work = pd.DataFrame({"ts": _bins(epoch_seconds(df["ts"]), interval_s) * interval_s,
                         "value": df[value].to_numpy(dtype=float, na_value=np.nan)})
    if by:
        work[by] = df[by].to_numpy()
    work = work.dropna(subset=["value"])
    grouped = work.groupby(keys, sort=True)["value"]
    return grouped.agg(how).reset_index()


def steady_window(ts: pd.Series | np.ndarray, trim_fraction: float = STEADY_TRIM_FRACTION
                  ) -> tuple[float, float] | None:
    """The span of ``ts`` with ``trim_fraction`` cut from each end (ramp-up, ramp-down).

    Returns ``(start, end)`` in epoch seconds, or None with fewer than two timestamps.
    """
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    arr = epoch_seconds(ts) if isinstance(ts, pd.Series) else np.asarray(ts, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size < 2 or arr.max() == arr.min():
        return None
    t0, t1 = float(arr.min()), float(arr.max())
    trim = (t1 - t0) * trim_fraction
    return t0 + trim, t1 - trim


def throughput_rps(records: pd.DataFrame, window: tuple[float, float] | None = None,
                   trim_fraction: float = STEADY_TRIM_FRACTION) -> float:
    """Successful requests per second started within the steady window ``[start, end)``.

    ``window`` defaults to :func:`steady_window` of the records' start times. NaN when
    there is no window (fewer than two requests).
    """
    return _steady_rate(records, _ok_mask, window, trim_fraction)


def _steady_rate(records: pd.DataFrame, counted: Callable[[pd.DataFrame], np.ndarray],
                 window: tuple[float, float] | None, trim_fraction: float) -> float:
    """Per second, the ``counted`` records started within ``window`` (default: the steady
    window of their start times); NaN without records or a window."""
    if records.empty:
        return math.nan
    ts = epoch_seconds(records["ts"])
    if window is None:
        window = steady_window(ts, trim_fraction)
    if window is None:
        return math.nan
    return _rate_in(ts, counted(records), window)


def _rate_in(ts: np.ndarray, mask: np.ndarray, window: tuple[float, float]) -> float:
    start, end = window
    if end <= start:
        raise ValueError(f"steady window end {end} is not after its start {start}")
    # half-open [start, end): n evenly spaced requests over (n - 1) gaps give the true rate
    inside = (ts >= start) & (ts < end)
    return float((inside & mask).sum() / (end - start))


def within_slo(records: pd.DataFrame, slo_ms: float) -> np.ndarray:
    """Which records succeeded within ``slo_ms`` (a latency equal to the SLO meets it)."""
    if slo_ms is None or not slo_ms > 0:
        raise ValueError(f"slo_ms must be > 0, got {slo_ms}")
    lat = records["latency_ms"].to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        return _ok_mask(records) & (lat <= slo_ms)


def goodput_rps(records: pd.DataFrame, slo_ms: float,
                window: tuple[float, float] | None = None,
                trim_fraction: float = STEADY_TRIM_FRACTION) -> float:
    """Goodput: successful requests per second that took at most ``slo_ms``, started within
    the steady window (the same window as :func:`throughput_rps`, so goodput <= throughput).
    NaN when there is no window."""
    return _steady_rate(records, lambda r: within_slo(r, slo_ms), window, trim_fraction)


def interval_goodput(records: pd.DataFrame, slo_ms: float, interval_s: float = 1.0
                     ) -> pd.DataFrame:
    """Per interval (aligned like :func:`interval_stats`, every interval from the first
    request to the last): ``ts`` and ``goodput_rps``, requests within ``slo_ms`` per s."""
    if records.empty:
        return pd.DataFrame({"ts": pd.Series([], dtype="float64"),
                             "goodput_rps": pd.Series([], dtype="float64")})
    ts = epoch_seconds(records["ts"])
    good = within_slo(records, slo_ms)
    keep = ~np.isnan(ts)
    bins = _bins(ts[keep], interval_s)
    all_bins = _full_range(bins)
    counts = np.bincount(bins[good[keep]] - all_bins[0], minlength=all_bins.size)
    return pd.DataFrame({"ts": all_bins * interval_s, "goodput_rps": counts / interval_s})


def cpu_saturation(percents: Sequence[float] | np.ndarray, threshold: float = SATURATED_CPU_PCT,
                   max_share: float = MAX_SATURATED_SHARE) -> tuple[bool, float, float]:
    """``(saturated, share, peak)`` of one load-generator worker's per-window CPU %:
    saturated when more than ``max_share`` of the windows are at or above ``threshold``.
    The same rule as ``locust/caio_cpu.saturation`` (which plugins cannot import); NaN
    windows are ignored; no windows: ``(False, 0.0, nan)``."""
    values = [float(p) for p in percents if not math.isnan(float(p))]
    if not values:
        return False, 0.0, math.nan
    share = sum(1 for p in values if p >= threshold) / len(values)
    return share > max_share, share, max(values)
