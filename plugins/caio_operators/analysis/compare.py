"""Compare a run with its baseline: relative changes, bootstrap intervals and a verdict.

Pure and seeded: samples in, a small table and a verdict out. Figures compared:

- ``p50_ms``, ``p95_ms``, ``p99_ms``: nearest-rank percentiles of the successful client
  latencies (lower is better);
- ``throughput_rps``: mean successful requests per second over the one-second bins of the
  steady window (higher is better);
- ``max_sustainable_rps``: the peak search's result, when both runs ran one (higher is
  better; a single number per run, so no interval).

Each change is ``candidate / baseline - 1``. Its confidence interval is a percentile
bootstrap: the two runs are resampled independently and the ratio of the resampled figures
taken ``N_RESAMPLES`` times. For a percentile the resample never has to be built: the r-th
order statistic of n draws with replacement from the sorted sample ``x`` is
``x[ceil(U * n) - 1]`` with ``U ~ Beta(r, n - r + 1)`` (the r-th of n uniforms), so each
bootstrap draw costs one Beta variate, whatever n (1e6 samples take one sort).

Verdict rules (``threshold`` default 10 %):

- **regression** when the chosen percentile is worse by more than ``threshold`` and its
  interval excludes zero, or when max sustainable throughput drops by more than
  ``threshold``;
- **improvement** when neither regressed and the chosen percentile is better by more than
  ``threshold`` with an interval excluding zero, or max sustainable throughput rises by
  more than ``threshold``;
- **no change** otherwise; **no baseline** when there was nothing to compare with;
- **no comparable baseline** / **not comparable** (decided before any figure is compared,
  by :mod:`caio_operators.benchmark`): the earlier runs, or the baseline named, measured
  another benchmark; never a regression or an improvement.

Requests of one run are not independent (queueing correlates neighbours), so the
intervals are somewhat narrow; the threshold is what keeps noise from being called a change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from caio_operators.results.stats import nearest_rank

PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0}
N_RESAMPLES = 2000
CONFIDENCE = 0.95
DEFAULT_THRESHOLD = 0.10
#: figure -> True when higher is better
DIRECTIONS = {"throughput_rps": True, "p50_ms": False, "p95_ms": False, "p99_ms": False,
              "max_sustainable_rps": True}
REGRESSION, IMPROVEMENT, NO_CHANGE, NO_BASELINE = (
    "regression", "improvement", "no change", "no baseline")
#: the verdicts of a run with no baseline measuring the same benchmark (benchmark.py)
NO_COMPARABLE_BASELINE, NOT_COMPARABLE = "no comparable baseline", "not comparable"


@dataclass(frozen=True)
class RunSample:
    """What the comparison needs of one run: its successful client latencies (ms), its
    successful requests per one-second bin of the steady window, and the peak search's
    result (None when no peak search ran)."""

    run_id: str
    latencies_ms: np.ndarray
    per_second: np.ndarray
    max_sustainable_rps: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "latencies_ms", _clean(self.latencies_ms))
        object.__setattr__(self, "per_second", _clean(self.per_second))


def _clean(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[~np.isnan(arr)]


@dataclass(frozen=True)
class Comparison:
    """The rows (one per figure) and the verdict with its reason in plain words."""

    verdict: str
    reason: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def row(self, metric: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["metric"] == metric)


def percentile(sorted_values: np.ndarray, q: float) -> float:
    """Nearest-rank percentile of an already sorted array (NaN when empty)."""
    if sorted_values.size == 0:
        return math.nan
    return float(sorted_values[nearest_rank(q, sorted_values.size) - 1])


def bootstrap_percentile(values: np.ndarray, q: float, n_resamples: int,
                         rng: np.random.Generator) -> np.ndarray:
    """``n_resamples`` bootstrap draws of the nearest-rank ``q`` percentile of ``values``
    (each as if computed on a resample of ``len(values)`` draws with replacement)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = x.size
    if n == 0:
        return np.full(n_resamples, np.nan)
    r = int(nearest_rank(q, n))
    u = rng.beta(r, n - r + 1, size=n_resamples)
    index = np.clip(np.ceil(u * n).astype(np.int64), 1, n) - 1
    return x[index]


def bootstrap_mean(values: np.ndarray, n_resamples: int, rng: np.random.Generator,
                   max_n: int = 5000) -> np.ndarray:
    """``n_resamples`` bootstrap draws of the mean of ``values``; samples over ``max_n``
    use the normal approximation of the resampled mean (exact enough there, and bounded)."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return np.full(n_resamples, np.nan)
    if n > max_n:
        return rng.normal(x.mean(), x.std() / math.sqrt(n), size=n_resamples)
    return x[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)


def change_interval(candidate_draws: np.ndarray, baseline_draws: np.ndarray,
                    confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of ``candidate / baseline - 1`` over paired bootstrap draws."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = candidate_draws / baseline_draws - 1.0
    ratio = ratio[np.isfinite(ratio)]
    if ratio.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratio, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _change(candidate: float | None, baseline: float | None) -> float | None:
    if candidate is None or baseline is None or not baseline or math.isnan(candidate) \
            or math.isnan(baseline):
        return None
    return candidate / baseline - 1.0


def _row(metric: str, candidate: float | None, baseline: float | None,
         interval: tuple[float, float] | None, threshold: float) -> dict[str, Any]:
    """One figure's comparison; ``worse`` / ``better``: beyond the threshold in that
    direction and (when there is an interval) with the interval excluding zero."""
    higher_better = DIRECTIONS[metric]
    change = _change(candidate, baseline)
    low, high = interval if interval is not None else (None, None)
    if low is not None and high is not None and (math.isnan(low) or math.isnan(high)):
        low = high = None
    worse = better = False
    if change is not None:
        bad = -change if higher_better else change  # > 0 means worse
        excludes_zero = interval is None or (
            low is not None and high is not None and (low > 0 or high < 0))
        worse = bad > threshold and excludes_zero
        better = -bad > threshold and excludes_zero
    return {"metric": metric, "candidate": _num(candidate), "baseline": _num(baseline),
            "change": change, "ci_low": low, "ci_high": high,
            "higher_is_better": higher_better, "worse": bool(worse), "better": bool(better)}


def _num(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) \
        else float(value)


def compare_runs(candidate: RunSample, baseline: RunSample | None, *,
                 percentile_name: str = "p95", threshold: float = DEFAULT_THRESHOLD,
                 seed: int = 0, n_resamples: int = N_RESAMPLES,
                 confidence: float = CONFIDENCE) -> Comparison:
    """Compare ``candidate`` with ``baseline`` and give the verdict (see the module doc)."""
    if percentile_name not in PERCENTILES:
        raise ValueError(f"percentile {percentile_name!r} is not one of {list(PERCENTILES)}")
    if not 0 < threshold < 10:
        raise ValueError(f"threshold {threshold} must be a fraction > 0 (0.1 = 10 %)")
    if baseline is None:
        return Comparison(NO_BASELINE, "no earlier successful run to compare with", [])
    rng = np.random.default_rng(seed)
    rows = []
    cand_lat, base_lat = np.sort(candidate.latencies_ms), np.sort(baseline.latencies_ms)
    for name, q in PERCENTILES.items():
        interval = change_interval(
            bootstrap_percentile(cand_lat, q, n_resamples, rng),
            bootstrap_percentile(base_lat, q, n_resamples, rng), confidence)
        rows.append(_row(f"{name}_ms", percentile(cand_lat, q), percentile(base_lat, q),
                         interval, threshold))
    interval = change_interval(bootstrap_mean(candidate.per_second, n_resamples, rng),
                               bootstrap_mean(baseline.per_second, n_resamples, rng),
                               confidence)
    rows.append(_row("throughput_rps", _mean(candidate.per_second),
                     _mean(baseline.per_second), interval, threshold))
    rows.append(_row("max_sustainable_rps", candidate.max_sustainable_rps,
                     baseline.max_sustainable_rps, None, threshold))
    return Comparison(*verdict(rows, percentile_name, threshold), rows)


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def verdict(rows: Sequence[Mapping[str, Any]], percentile_name: str, threshold: float
            ) -> tuple[str, str]:
    """``(verdict, reason)`` from the comparison rows (rules in the module doc)."""
    by = {r["metric"]: r for r in rows}
    pct, peak = by[f"{percentile_name}_ms"], by.get("max_sustainable_rps")
    worse = [r for r in (pct, peak) if r and r["worse"]]
    better = [r for r in (pct, peak) if r and r["better"]]
    if pct["change"] is None:
        return NO_CHANGE, f"{percentile_name} could not be compared (no successful requests)"
    if worse:
        return REGRESSION, "; ".join(_describe(r) for r in worse)
    if better:
        return IMPROVEMENT, "; ".join(_describe(r) for r in better)
    return NO_CHANGE, (f"{_describe(pct)}: within {threshold:.0%} or not significant"
                       + ("" if peak is None or peak["change"] is None else
                          f"; {_describe(peak)}"))


def _describe(row: Mapping[str, Any]) -> str:
    text = (f"{row['metric']} {row['baseline']:.4g} -> {row['candidate']:.4g} "
            f"({row['change']:+.1%}")
    if row["ci_low"] is not None:
        text += f", 95% CI {row['ci_low']:+.1%} to {row['ci_high']:+.1%}"
    elif row["metric"] == "max_sustainable_rps":
        text += ", one peak search per run: no interval"
    return text + ")"
