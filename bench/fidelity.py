"""Fidelity (issue 4, part 2): do the reported tail latencies match the truth when the server
stalls? Open loop (the locustfile's ``open_rate``) against closed loop (its ``constant``
users), both against ``bench/responder.py`` in stalling mode (``stall_s`` at the start of
every ``period_s``, ``service_ms`` otherwise), pinned like the efficiency benchmark.

Ground truth: a perfect generator sending at the open-loop run's intended send times ``t``
would see ``max(0, stall_s - phase(t)) + service_ms`` (the rest of the stall ``t`` falls in,
plus the service time); its p99 and p99.9 are computed exactly (nearest rank). The open-loop
figures come from the raw records the locustfile wrote (``latency_ms`` is measured from the
intended send time; also from its HDR histograms, the harvest path); the closed-loop ones
from its raw records (measured from the actual send, as any closed-loop tool does).

Closed loop has no rate knob, only users and a think time, so it is matched on offered
rate: ``users = rate x (think_s + service)``, with a think time (default 0.1 s) short
against the stall, as closed-loop tests are usually written. Each user then sits out a
stall on one request and sends ~100 quick ones between stalls, so the stall is ~1% of its
samples instead of ``stall_s / period_s``: the coordinated omission this measures. (With a
think time longer than the stall, closed loop samples the stall almost like open loop.)

The pure functions (``true_latency_ms``, ``nearest_rank``, ``figures``...) need nothing but
the stdlib; :func:`run` starts the processes (``bench/loadgen.py`` calls it).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import free_port, pin, spread, start_listening, stop

REPO = Path(__file__).resolve().parent.parent
PREDICT_PATH = "/v1/models/bench:predict"
MAX_ERROR_PCT = 10.0  # issue 4: open loop within 10% of the truth
PERCENTILES = (("p99", 99.0), ("p999", 99.9))


@dataclass(frozen=True)
class Stall:
    """The responder's schedule: ``stall_s`` from ``origin`` (epoch s) every ``period_s``."""

    period_s: float
    stall_s: float
    service_ms: float
    origin: float

    def __post_init__(self) -> None:
        if not 0 < self.stall_s < self.period_s or self.service_ms < 0:
            raise ValueError(f"stall {self.stall_s} s every {self.period_s} s, service "
                             f"{self.service_ms} ms: need 0 < stall < period, service >= 0")


def true_latency_ms(intended: float, stall: Stall) -> float:
    """What a request sent exactly at epoch ``intended`` sees: the rest of the stall it
    falls in (if any) plus the service time."""
    phase = (intended - stall.origin) % stall.period_s
    return max(0.0, stall.stall_s - phase) * 1000.0 + stall.service_ms


def nearest_rank(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) by nearest rank: the smallest value with at
    least ``q``% of the values at or below it. Raises ``ValueError`` on no values."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("nearest_rank of no values")
    # round() first: 99.9% of 1000 is 999.0000000000001 in floating point, rank 999
    rank = max(1, math.ceil(round(len(ordered) * q / 100.0, 9)))
    return ordered[rank - 1]


def error_pct(reported: float, truth: float) -> float:
    """Signed error of a reported figure against the truth, in % of the truth."""
    return (reported - truth) / truth * 100.0


@dataclass(frozen=True)
class Record:
    """One raw record of the locustfile (``ts``: intended send time in open loop)."""

    ts: float
    latency_ms: float
    ok: bool
    error: str


def read_records(requests_dir: Path) -> list[Record]:
    """The raw records (``<output>/requests/*.csv``) of one run."""
    out = []
    for path in sorted(requests_dir.glob("*.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                latency = float(row["latency_ms"]) if row["latency_ms"] else math.nan
                out.append(Record(float(row["ts"]), latency, row["ok"] == "1", row["error"]))
    return out


def figures(open_records: Sequence[Record], closed_records: Sequence[Record],
            stall: Stall) -> dict[str, Any]:
    """Truth, open-loop and closed-loop p99 / p99.9 and errors, from the raw records."""
    if not open_records or not closed_records:
        raise ValueError(f"no raw records ({len(open_records)} open-loop, "
                         f"{len(closed_records)} closed-loop): did the runs send anything?")
    truth = [true_latency_ms(r.ts, stall) for r in open_records]
    open_ok = [r.latency_ms for r in open_records if r.ok]
    closed_ok = [r.latency_ms for r in closed_records if r.ok]
    if not open_ok or not closed_ok:
        raise ValueError("a run has no successful request; see its log")
    out: dict[str, Any] = {}
    for name, q in PERCENTILES:
        true_q = nearest_rank(truth, q)
        open_q, closed_q = nearest_rank(open_ok, q), nearest_rank(closed_ok, q)
        out |= {f"true_{name}_ms": round(true_q, 3), f"open_{name}_ms": round(open_q, 3),
                f"closed_{name}_ms": round(closed_q, 3),
                f"open_error_{name}_pct": round(error_pct(open_q, true_q), 2),
                f"closed_error_{name}_pct": round(error_pct(closed_q, true_q), 2)}
    dropped = sum(1 for r in open_records if r.error.startswith("dropped:"))
    out["requests"] = {"intended": len(open_records), "open": len(open_records) - dropped,
                       "open_dropped": dropped,
                       "open_failed": sum(1 for r in open_records if not r.ok) - dropped,
                       "closed": len(closed_records),
                       "closed_failed": sum(1 for r in closed_records if not r.ok)}
    out["closed_rps"] = round(_rate(closed_records), 1)
    out["open_rps"] = round(_rate(open_records), 1)
    return out


def _rate(records: Sequence[Record]) -> float:
    first, last = min(r.ts for r in records), max(r.ts for r in records)
    return (len(records) - 1) / (last - first) if last > first else 0.0


def verdict(fid: Mapping[str, Any], max_error_pct: float = MAX_ERROR_PCT) -> dict[str, Any]:
    """The issue-4 target: the open-loop p99 and p99.9 within ``max_error_pct`` of truth
    (``open_error_<p>_pct``: one round's errors, or the median of the rounds' sizes)."""
    met = {name: abs(fid[f"open_error_{name}_pct"]) <= max_error_pct for name, _ in PERCENTILES}
    return {"max_error_pct": max_error_pct, **{f"met_{k}": v for k, v in met.items()},
            "met": all(met.values())}


# --- the runner -------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    rate: float = 200.0  # req/s
    seconds: float = 30.0
    period_s: float = 10.0
    stall_s: float = 1.0
    service_ms: float = 1.0
    closed_think_s: float = 0.02

    def __post_init__(self) -> None:
        if not self.rate > 0 or not self.seconds > 0 or self.closed_think_s < 0:
            raise ValueError(f"fidelity rate {self.rate}, seconds {self.seconds}, closed think "
                             f"time {self.closed_think_s}: need rate > 0, seconds > 0, think >= 0")
        Stall(self.period_s, self.stall_s, self.service_ms, 0.0)  # checks those three

    @property
    def max_in_flight(self) -> int:
        # a stall holds rate x stall_s requests; twice that, so none is dropped by the cap
        return math.ceil(2 * self.rate * self.stall_s) + 64

    @property
    def closed_users(self) -> int:
        return max(1, round(self.rate * (self.closed_think_s + self.service_ms / 1000.0)))


def start_stalling_responder(settings: Settings, tmp: Path, core: int
                             ) -> tuple[subprocess.Popen, int, Stall]:
    port = free_port()
    # the first stall starts a little after the responder is up; any origin would do
    stall = Stall(settings.period_s, settings.stall_s, settings.service_ms, time.time() + 2.0)
    argv = [sys.executable, str(REPO / "bench" / "responder.py"), "--port", str(port),
            "--stall-period-s", repr(stall.period_s), "--stall-s", repr(stall.stall_s),
            "--service-ms", repr(stall.service_ms), "--origin", repr(stall.origin)]
    return start_listening(argv, tmp / "responder-stalling.log", port, core), port, stall


def run_locust(name: str, config_uri: str, tmp: Path, core: int, timeout_s: float) -> None:
    """One standalone headless run of the locustfile with a test config, pinned to ``core``."""
    argv = [sys.executable, "-m", "locust", "-f", str(REPO / "locust" / "locustfile.py"),
            "--headless", "--caio-config", config_uri, "--csv", str(tmp / name),
            "--exit-code-on-error", "0", "--loglevel", "INFO", "--stop-timeout", "5"]
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        pin(proc, core)
        try:
            proc.wait(timeout=timeout_s)
        finally:
            stop(proc)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"fidelity {name}: locust exited with code {proc.returncode}; "
                           f"log tail:\n{tail}")


def run(settings: Settings, tmp: Path, payload_uri: str, *, signature: str,
        generator_core: int, responder_core: int) -> dict[str, Any]:
    """Open-loop then closed-loop runs against one stalling responder; the figures."""
    from caio_operators import storage
    from caio_operators.loadgen.launch import make_config
    from caio_operators.results import hdr

    proc, port, stall = start_stalling_responder(settings, tmp, responder_core)
    url = f"http://127.0.0.1:{port}{PREDICT_PATH}"
    common = {"predict_url": url, "protocol": "tfserving", "signature": signature,
              "payload_uri": payload_uri, "duration_s": settings.seconds,
              "request_timeout_s": 10.0}
    runs = {
        "fidelity_open": {"load_shape": "open_rate", "users": 1, "spawn_rate": 1,
                          "rate": settings.rate, "arrivals": "constant",
                          "max_in_flight": settings.max_in_flight},
        "fidelity_closed": {"load_shape": "constant", "users": settings.closed_users,
                            "spawn_rate": settings.closed_users,
                            "think_time_s": settings.closed_think_s},
    }
    try:
        for name, shape in runs.items():
            config = make_config(test_id=f"bench-{name}", output_uri=(tmp / name).as_uri(),
                                 **common, **shape)
            config_path = tmp / f"{name}.json"
            config_path.write_text(json.dumps(config))
            print(f"  fidelity: {name} ...", end=" ", flush=True)
            run_locust(name, config_path.as_uri(), tmp, generator_core,
                       timeout_s=settings.seconds + 120)
            print("done", flush=True)
    finally:
        stop(proc)
    open_records = read_records(tmp / "fidelity_open" / "requests")
    out = figures(open_records, read_records(tmp / "fidelity_closed" / "requests"), stall)
    histograms = storage.list_files((tmp / "fidelity_open" / "histograms").as_uri(), ".jsonl")
    if histograms:  # the harvest path: HDR histograms merged (within 1% of the raw records)
        _, whole = hdr.summarize(hdr.read_records(histograms))
        out |= {"open_hdr_p99_ms": whole["p99_ms"], "open_hdr_p999_ms": whole["p999_ms"]}
    return {"rate": settings.rate, "seconds": settings.seconds,
            "stall_period_s": settings.period_s, "stall_length_s": settings.stall_s,
            "service_ms": settings.service_ms, "max_in_flight": settings.max_in_flight,
            "closed_users": settings.closed_users, "closed_think_s": settings.closed_think_s,
            **out, "target": verdict(out)}


def over_rounds(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Fidelity over its rounds: the figures of the round whose larger open-loop error is
    the median one, the spread of every error (signed, percent) and the target judged on
    the median error sizes (one disturbed round moves it least)."""
    def worst(r: Mapping[str, Any]) -> float:
        return max(abs(r[f"open_error_{name}_pct"]) for name, _ in PERCENTILES)

    middle = sorted(rounds, key=worst)[(len(rounds) - 1) // 2]
    errors = [f"{kind}_error_{name}_pct" for kind in ("open", "closed") for name, _ in PERCENTILES]
    median_sizes = {f"open_error_{name}_pct": spread(
        (abs(r[f"open_error_{name}_pct"]) for r in rounds), 2)["median"]
        for name, _ in PERCENTILES}
    return {**middle, "rounds": len(rounds),
            "spread": {key: spread((r[key] for r in rounds), 2) for key in errors},
            "target": {**verdict(median_sizes), "median_error_pct": median_sizes}}


def run_rounds(settings: Settings, rounds: int, tmp: Path, payload_uri: str,
               **options: Any) -> dict[str, Any]:
    """``run`` ``rounds`` times, each in its own folder; ``over_rounds`` of them."""
    results = []
    for round_no in range(1, rounds + 1):
        folder = tmp / f"fidelity-round-{round_no}"
        folder.mkdir()
        print(f"  fidelity round {round_no} of {rounds}", flush=True)
        results.append(run(settings, folder, payload_uri, **options))
    return over_rounds(results)


def table(fid: Mapping[str, Any]) -> str:
    req = fid["requests"]
    lines = [
        f"fidelity: {fid['rate']:g} req/s for {fid['seconds']:g} s, stall "
        f"{fid['stall_length_s']:g} s every {fid['stall_period_s']:g} s, service "
        f"{fid['service_ms']:g} ms; open loop max_in_flight {fid['max_in_flight']}, closed "
        f"loop {fid['closed_users']} users with {fid['closed_think_s']:g} s think time",
        f"{'':<12} {'p99 ms':>9} {'error':>8} {'p99.9 ms':>9} {'error':>8} {'requests':>9}",
        f"{'truth':<12} {fid['true_p99_ms']:>9.1f} {'':>8} {fid['true_p999_ms']:>9.1f} {'':>8} "
        f"{req['intended']:>9}",
    ]
    for kind in ("open", "closed"):
        lines.append(
            f"{kind + ' loop':<12} {fid[f'{kind}_p99_ms']:>9.1f} "
            f"{fid[f'{kind}_error_p99_pct']:>+7.1f}% {fid[f'{kind}_p999_ms']:>9.1f} "
            f"{fid[f'{kind}_error_p999_pct']:>+7.1f}% {req[kind]:>9}")
    if "open_hdr_p99_ms" in fid:
        lines.append(f"{'open (HDR)':<12} {fid['open_hdr_p99_ms']:>9.1f} {'':>8} "
                     f"{fid['open_hdr_p999_ms']:>9.1f}")
    spreads = fid.get("spread")
    if spreads:
        lines.append(f"errors over {fid['rounds']} rounds, median (min to max) %: " + ", ".join(
            f"{key.removesuffix('_pct').replace('_error_', ' ')} {value['median']:+.1f} "
            f"({value['min']:+.1f} to {value['max']:+.1f})" for key, value in spreads.items()))
    target = fid["target"]
    lines.append(
        f"target open loop within {target['max_error_pct']:g}% of the truth"
        f"{' (median of the rounds)' if spreads else ''}: p99 "
        f"{'MET' if target['met_p99'] else 'NOT met'}, p99.9 "
        f"{'MET' if target['met_p999'] else 'NOT met'} (open loop dropped "
        f"{req['open_dropped']}, failed {req['open_failed']}; closed loop failed "
        f"{req['closed_failed']}, {fid['closed_rps']:g} req/s)")
    return "\n".join(lines)
