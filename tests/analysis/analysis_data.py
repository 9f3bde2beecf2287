"""Hand-made rows for the analysis tests: a tidy timeseries and a synthetic staircase run."""

from __future__ import annotations

import numpy as np
import pandas as pd

from caio_operators.results import schema as sc

T0 = 1_700_000_000


def timeseries(rows: list[tuple[int, str, float]], run_id: str = "r") -> pd.DataFrame:
    """(second offset, metric, value) rows with dimension 'all' -> a schema timeseries."""
    return sc.conform("timeseries", pd.DataFrame({
        "run_id": run_id,
        "ts": pd.to_datetime([T0 + s for s, _, _ in rows], unit="s", utc=True),
        "metric": [m for _, m, _ in rows],
        "dimension": sc.DIMENSION_ALL,
        "value": [v for _, _, v in rows],
    }))


def staircase(levels: list[tuple[int, int, float, float, float]]) -> pd.DataFrame:
    """One row per second: (users, seconds, req/s, failures/s, p95 ms); p50 = p95 / 2."""
    rows, t = [], 0
    for users, seconds, rate, fail, p95 in levels:
        for _ in range(seconds):
            rows += [(t, sc.USERS, float(users)), (t, sc.REQUEST_RATE_RPS, rate),
                     (t, sc.FAILURE_RATE_RPS, fail), (t, sc.CLIENT_LATENCY_P95_MS, p95),
                     (t, sc.CLIENT_LATENCY_P50_MS, p95 / 2)]
            t += 1
    return timeseries(rows)


def raw_staircase(seed: int = 1):
    """Raw client/server/samples/history frames of a 3-step staircase that saturates.

    1, 2 and 4 users for 8 s each; the server tops out near 20 req/s, so 4 users only
    queue: p95 jumps while throughput barely moves.
    """
    rng = np.random.default_rng(seed)
    client, server, samples, history = [], [], [], []
    t = float(T0)
    for users, rate, base in ((1, 10, 20.0), (2, 20, 22.0), (4, 20, 90.0)):
        for _ in range(8):
            ts = t + np.sort(rng.random(rate))
            lat = base + rng.exponential(3.0, rate)
            for i in range(rate):
                client.append((ts[i], lat[i], True, 200, "serving_default", str(i % 2), 64, ""))
                server.append((ts[i] + 0.001, lat[i] * 0.5, True, 200, "serving_default",
                               str(i % 2), 1, ""))
            history.append((t, users, "Aggregated"))
            samples += [(t + 0.5, "0", 100, rate * 4.0, 300.0), (t + 0.5, "1", 101,
                                                                  rate * 4.5, 310.0)]
            t += 1.0
    client = pd.DataFrame(client, columns=["ts", "latency_ms", "ok", "status_code", "signature",
                                           "worker", "bytes", "error"])
    server = pd.DataFrame(server, columns=["ts", "latency_ms", "ok", "status_code", "signature",
                                           "replica", "instances", "error"])
    samples = pd.DataFrame(samples, columns=["ts", "replica", "pid", "cpu_percent", "rss_mb"])
    history = pd.DataFrame(history, columns=["ts", "users", "name"])
    return client, server, samples, history
