"""Harvest and store throughput (issue 7, part 2): raw request records -> the tidy tables,
Parquet and DuckDB, against a plain pyarrow read + Parquet write of the same CSVs (the
limit), side by side in one run.

    .venv/bin/python bench/harvest.py [--records 10000000] [--out bench/results/harvest.json]

What one run does:

1. **Generate** (not timed) a run's raw files in a ``file://`` bucket exactly as the product
   writes them: ``--records`` client records from ``--workers`` Locust workers at
   ``--rate`` req/s (``load/requests/worker-<id>-<seq>.csv``, one file per worker per
   ``--flush-s`` flush, the locustfile's columns and number formats, lognormal latencies
   with a tail, ``--failure-share`` failures with the locustfile's error texts: HTTP 503 and
   500 bodies quoted by the CSV writer, connection resets with status 0); the local server's
   records for every answered request (``server/requests/replica-<i>-<seq>.csv``), its
   CPU/RSS samples every second (``server/samples/``), the workers' CPU samples
   (``load/workers/``) and Locust's ``locust_stats_history.csv``.
2. **Product**: ``harvest_run`` (what the harvest task calls) into a fresh DuckDB file, in a
   fresh subprocess: seconds of the call, its own breakdown (read, build, parquet: until
   the Parquet files are stored, warehouse: the rest of the DuckDB load, which overlaps the
   Parquet writing) and the child's peak resident memory (``VmHWM``).
3. **Limit**: in another fresh subprocess, ``pyarrow.dataset`` reads the same client and
   server CSV folders with the same column types, and ``pyarrow.parquet`` writes the records
   as one zstd file: the least any harvest must do.

``--replicas 0`` generates a cloud target's run: client records only, no server files.

Steps 2 and 3 run ``--rounds`` times (default 3), alternating (limit, then product into a
fresh warehouse), on the same generated files; each reports min / median / max and the
targets are judged on the medians.

Targets: 10 M records in under 10 s, peak memory under 2 GB (issue 7); the product within
1.3x the limit's time (issue 18).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from procs import spread, spread_text, target_lines, write_result

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins"))

TARGET_SECONDS = 10.0
TARGET_RECORDS = 10_000_000
TARGET_PEAK_MB = 2048.0
TARGET_RATIO = 1.3  # issue 18: the product within 1.3x the limit's time
#: Arrow's memory pool harvest_run chooses (results/harvest.use_jemalloc); the limit runs
#: with pyarrow's default pool and, to show what the pool alone is worth, with this one
PRODUCT_POOL = "jemalloc"
RUN_ID = "bench-harvest"
SIGNATURE = "serving_preprocess"
CLIENT_HEADER = "ts,latency_ms,ok,status_code,signature,worker,bytes,error"
SERVER_HEADER = "ts,latency_ms,ok,status_code,signature,replica,instances,error"
SAMPLES_HEADER = "ts,replica,pid,cpu_percent,rss_mb"
WORKER_CPU_HEADER = "ts,worker,cpu_percent"
HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
    "99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,"
    "Total Average Response Time,Total Min Response Time,Total Max Response Time,"
    "Total Average Content Size")
# (share of failures, status, client error as written by the CSV writer, server error)
FAILURES = (
    (0.6, 503, '"HTTP 503: {""error"": ""overloaded, retry later""}"', "overloaded, retry later"),
    (0.3, 0, "ConnectionResetError: [Errno 104] Connection reset by peer", None),
    (0.1, 500, '"HTTP 500: {""error"": ""Internal: model call failed""}"',
     "Internal: model call failed"),
)
START_TS = 1_790_000_000.0  # 2026-09-21, any fixed epoch
# the local server flushes every 2 s: request records in targets/replica.py
# (FLUSH_INTERVAL_S), CPU/RSS samples in targets/supervisor.py (SAMPLE_FLUSH_INTERVAL_S)
SERVER_FLUSH_S = 2.0


# ------------------------------------------------------------------ generating (not timed)

def _fixed(values, decimals: int):
    """Non-negative floats as text with exactly ``decimals`` decimals (like f"{v:.3f}"),
    vectorised with Arrow (10 M rows in a second, not a minute of Python formatting)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    scaled = pa.array(np.round(np.asarray(values) * 10 ** decimals).astype(np.int64))
    text = pc.utf8_lpad(pc.cast(scaled, pa.string()), decimals + 1, "0")
    return pc.binary_join_element_wise(pc.utf8_slice_codeunits(text, 0, -decimals),
                                       pc.utf8_slice_codeunits(text, -decimals, 1 << 30), ".")


def _text(values):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pa.array(values), pa.string())


def _lines(columns) -> bytes:
    """Rows of already-formatted columns -> CSV body bytes (one ``\\n``-ended line each)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*columns, ","),
                                        pa.scalar("\n"), "")
    # the data buffer of a string array holds every value back to back: the file body
    _, offsets, data = lines.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int32)[lines.offset:lines.offset + len(lines) + 1]
    return data.to_pybytes()[offsets[0]:offsets[-1]]


def _write(path: Path, header: str, body: bytes) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = header.encode() + b"\n" + body
    path.write_bytes(data)
    return len(data)


def _chunks(seq):
    """``(seq, slice)`` for each run of equal values in the sorted int array ``seq``."""
    import numpy as np

    if not seq.size:
        return
    bounds = np.searchsorted(seq, np.arange(seq[0], seq[-1] + 2))
    for i, s in enumerate(range(int(seq[0]), int(seq[-1]) + 1)):
        if bounds[i] < bounds[i + 1]:
            yield s, slice(int(bounds[i]), int(bounds[i + 1]))


def generate(bucket_dir: Path, records: int, workers: int, rate: float, flush_s: float,
             failure_share: float, replicas: int, seed: int = 7) -> dict[str, Any]:
    """Write one run's raw files under ``bucket_dir/runs/<RUN_ID>``; return what was written."""
    import numpy as np

    rng = np.random.default_rng(seed)
    run_dir = bucket_dir / "runs" / RUN_ID
    duration = records / rate
    worker_ids = [f"bench-host-{10_000 + k}" for k in range(workers)]
    worker = np.repeat(np.arange(workers), [records // workers + (k < records % workers)
                                            for k in range(workers)])
    ts = START_TS + rng.uniform(0, duration, records)
    ts = ts[np.lexsort((ts, worker))]  # each worker's records in time order
    latency = np.minimum(rng.lognormal(np.log(25.0), 0.45, records), 60_000.0)
    tail = rng.random(records) < 0.005  # a slow tail: 4x to 20x
    latency[tail] *= rng.uniform(4, 20, int(tail.sum()))
    fail = rng.random(records) < failure_share
    kind = np.where(fail, rng.choice(len(FAILURES), size=records, p=[f[0] for f in FAILURES])
                    + 1, 0)  # 0: ok, else 1 + index in FAILURES
    status = np.array([200, *(f[1] for f in FAILURES)])[kind]
    nbytes_col = np.where(fail, np.where(status == 0, 0, 52), rng.integers(380, 420, records))
    client_errors = np.array(["", *(f[2] for f in FAILURES)], dtype=object)
    server_errors = np.array(["", *(_quoted(f[3] or "") for f in FAILURES)], dtype=object)
    files = {"client": 0, "server": 0, "samples": 0, "worker_cpu": 0}
    nbytes = {"client": 0, "server": 0}
    # the locustfile: one file per worker per flush, rows in completion (~start) order
    seq = ((ts - START_TS) // flush_s).astype(np.int64)
    for k, name in enumerate(worker_ids):
        mine = np.flatnonzero(worker == k)
        for s, sl in _chunks(seq[mine]):
            rows = mine[sl]
            body = _lines([_fixed(ts[rows], 6), _fixed(latency[rows], 3),
                           _text((~fail[rows]).astype(np.int8)), _text(status[rows]),
                           _text(np.full(rows.size, SIGNATURE, dtype=object)),
                           _text(np.full(rows.size, name, dtype=object)),
                           _text(nbytes_col[rows]), _text(client_errors[kind[rows]])])
            nbytes["client"] += _write(
                run_dir / "load" / "requests" / f"worker-{name}-{s:06d}.csv", CLIENT_HEADER,
                body)
            files["client"] += 1
    # the local server: every answered request (a connection reset never reached it), each
    # replica flushing its own file every 2 s
    answered = np.flatnonzero(status != 0) if replicas else np.zeros(0, dtype=np.int64)
    answered = answered[np.argsort(ts[answered], kind="stable")]
    replica = np.arange(answered.size) % max(replicas, 1)
    s_seq = ((ts[answered] - START_TS) // SERVER_FLUSH_S).astype(np.int64)
    for r in range(replicas):
        mine = answered[replica == r]
        for s, sl in _chunks(s_seq[replica == r]):
            rows = mine[sl]
            body = _lines([_fixed(ts[rows] + 0.0004, 6), _fixed(latency[rows] * 0.93, 3),
                           _text((~fail[rows]).astype(np.int8)), _text(status[rows]),
                           _text(np.full(rows.size, SIGNATURE, dtype=object)),
                           _text(np.full(rows.size, str(r), dtype=object)),
                           _text(np.ones(rows.size, dtype=np.int64)),
                           _text(server_errors[kind[rows]])])
            nbytes["server"] += _write(
                run_dir / "server" / "requests" / f"replica-{r}-{s:06d}.csv", SERVER_HEADER,
                body)
            files["server"] += 1
    seconds = int(np.ceil(duration))
    files["samples"] = _write_samples(run_dir, seconds, replicas, rng) if replicas else 0
    files["worker_cpu"] = _write_worker_cpu(run_dir, seconds, worker_ids, flush_s, rng)
    failures = int(fail.sum())
    _write_history(run_dir, seconds, rate, records, failures)
    return {"records": records, "server_records": int(answered.size), "failures": failures,
            "workers": workers, "replicas": replicas, "rate_rps": rate,
            "run_seconds": round(duration, 1), "flush_s": flush_s, "files": files,
            "csv_bytes": nbytes, "run_id": RUN_ID,
            "started_at": START_TS, "ended_at": START_TS + duration}


def _quoted(text: str) -> str:
    """``text`` as Python's csv writer writes it (quoted when it holds , " or a newline)."""
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _write_samples(run_dir: Path, seconds: int, replicas: int, rng) -> int:
    """The server's supervisor: every replica each second, one file per 2-s flush."""
    import numpy as np

    count = 0
    for s in range(0, seconds, int(SERVER_FLUSH_S)):
        ts = np.repeat(START_TS + np.arange(s, min(s + int(SERVER_FLUSH_S), seconds)) + 0.01,
                       replicas)
        rep = np.tile(np.arange(replicas), ts.size // replicas)
        body = _lines([_fixed(ts, 6), _text(rep), _text(4000 + rep),
                       _fixed(rng.uniform(60, 100, ts.size), 1),
                       _fixed(rng.uniform(900, 1100, ts.size), 1)])
        _write(run_dir / "server" / "samples" / f"samples-{count:06d}.csv", SAMPLES_HEADER,
               body)
        count += 1
    return count


def _write_worker_cpu(run_dir: Path, seconds: int, worker_ids: list[str], flush_s: float,
                      rng) -> int:
    """Each worker's CPU per second, flushed with its records."""
    import numpy as np

    count, step = 0, max(1, int(flush_s))
    for name in worker_ids:
        for i, s in enumerate(range(0, seconds, step)):
            ts = START_TS + np.arange(s, min(s + step, seconds), dtype=float)
            body = _lines([_fixed(ts, 3), _text(np.full(ts.size, name, dtype=object)),
                           _fixed(rng.uniform(20, 60, ts.size), 1)])
            _write(run_dir / "load" / "workers" / f"worker-{name}-{i:06d}.csv",
                   WORKER_CPU_HEADER, body)
            count += 1
    return count


def _write_history(run_dir: Path, seconds: int, rate: float, records: int,
                   failures: int) -> None:
    """Locust's per-second ``_stats_history.csv`` (the Aggregated row; it feeds ``users``)."""
    rows = []
    for s in range(1, seconds + 1):
        done = min(records, int(rate * s))
        failed = int(failures * done / max(records, 1))
        rows.append(f"{int(START_TS) + s},64,,Aggregated,{rate:.6f},0.000000,"
                    + ",".join(["25"] * 11) + f",{done},{failed},25,26.1,3,900,400")
    _write(run_dir / "load" / "locust_stats_history.csv", HISTORY_HEADER,
           ("\n".join(rows) + "\n").encode())


# ------------------------------------------------------------------ measured steps (children)

def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM: per address space, so exec resets it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_product(bucket: str, warehouse: str, gen: dict[str, Any]) -> dict[str, Any]:
    t_import = time.perf_counter()
    from caio_operators.layout import RunLayout
    from caio_operators.results.harvest import harvest_run

    imported = time.perf_counter() - t_import
    base_mb = _peak_mb()
    meta = {"run_id": RUN_ID, "dag_id": "caio_load_test", "target": "local",
            "protocol": "caip", "model_name": "bench", "model_version": "v1",
            "model_source": "builtin:tiny", "weights": "untrained", "signature": SIGNATURE,
            "load_shape": "constant", "users": 64, "workers": gen["workers"],
            "replicas": gen["replicas"], "status": "success", "reason": "",
            "started_at": gen["started_at"], "ended_at": gen["ended_at"],
            "provenance": {"bench": "harvest"}, "params": {"users": 64}}
    t0 = time.perf_counter()
    out = harvest_run(RunLayout(bucket, RUN_ID), meta, warehouse)
    seconds = time.perf_counter() - t0
    import pyarrow as pa

    tables = Path(bucket.removeprefix("file://")) / "runs" / RUN_ID / "tables"
    return {"seconds": round(seconds, 3), "pool": pa.default_memory_pool().backend_name,
            "breakdown_s": out["seconds"],
            "counts": out["counts"], "import_s": round(imported, 3),
            "baseline_mb": round(base_mb, 1), "peak_mb": round(_peak_mb(), 1),
            "figures": out["figures"], "skipped_files": len(out["skipped_files"]),
            "parquet_bytes": {p.stem: p.stat().st_size for p in tables.glob("*.parquet")},
            "warehouse_bytes": Path(warehouse.removeprefix("duckdb://")).stat().st_size}


def step_limit(bucket: str, out_path: str) -> dict[str, Any]:
    """The limit: read the client and server CSV folders with pyarrow (same column types as
    the product's readers), write the records as one zstd Parquet file."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from caio_operators.results.readers import CLIENT_COLUMNS, SERVER_COLUMNS

    base_mb = _peak_mb()
    run = Path(bucket.removeprefix("file://")) / "runs" / RUN_ID
    names = ["ts", "latency_ms", "ok", "status_code", "signature", "origin", "error"]
    t0 = time.perf_counter()
    parts = []
    for source, folder, columns, origin in (
            ("client", run / "load" / "requests", CLIENT_COLUMNS, "worker"),
            ("server", run / "server" / "requests", SERVER_COLUMNS, "replica")):
        if not folder.is_dir():  # no local server: client records only
            continue
        fmt = ds.CsvFileFormat(convert_options=pacsv.ConvertOptions(column_types=columns))
        table = ds.dataset(str(folder), format=fmt).to_table(
            columns=["ts", "latency_ms", "ok", "status_code", "signature", origin, "error"])
        table = table.rename_columns(names)
        parts.append(table.add_column(0, "source", pa.repeat(pa.scalar(source), len(table)))
                     .add_column(0, "run_id", pa.repeat(pa.scalar(RUN_ID), len(table))))
    t_read = time.perf_counter()
    pq.write_table(pa.concat_tables(parts), out_path, compression="zstd")
    t_done = time.perf_counter()
    return {"seconds": round(t_done - t0, 3), "pool": pa.default_memory_pool().backend_name,
            "breakdown_s": {"read": round(t_read - t0, 3), "parquet": round(t_done - t_read, 3)},
            "rows": sum(len(p) for p in parts), "baseline_mb": round(base_mb, 1),
            "peak_mb": round(_peak_mb(), 1), "parquet_bytes": Path(out_path).stat().st_size}


def run_child(step: str, *args: str, pool: str = "") -> dict[str, Any]:
    """Run one measured step in a fresh interpreter (its own peak memory); its JSON back.
    ``pool``: Arrow's memory pool for it (ARROW_DEFAULT_MEMORY_POOL), else pyarrow's
    default."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "plugins"))
    env.pop("ARROW_DEFAULT_MEMORY_POOL", None)
    if pool:
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool
    proc = subprocess.run([sys.executable, __file__, "--step", step, *args],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the {step} step failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the run

def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {name: metadata.version(name) for name in ("pyarrow", "duckdb", "pandas")}
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            **versions, "memory_mb": _total_memory_mb(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def _total_memory_mb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**20)
    except ImportError:
        return None


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues' targets on the median round, the time one scaled to the records of this
    run (10 s per 10 M records)."""
    product = result["product"]
    allowed_s = TARGET_SECONDS * result["generated"]["records"] / TARGET_RECORDS
    ratio = result["ratio"]["seconds_product_over_limit"]
    return [
        {"name": f"harvest {result['generated']['records']:,} records in < {allowed_s:.3g} s "
                 "(median)", "value": product["seconds"], "limit": allowed_s,
         "met": product["seconds"] < allowed_s},
        {"name": f"time product / limit <= {TARGET_RATIO:g}x (medians)", "value": ratio,
         "limit": TARGET_RATIO, "met": ratio <= TARGET_RATIO},
        {"name": f"peak memory < {TARGET_PEAK_MB:.0f} MB (median)", "value": product["peak_mb"],
         "limit": TARGET_PEAK_MB, "met": product["peak_mb"] < TARGET_PEAK_MB},
    ]


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A step over its rounds: the round of median seconds (its breakdown and counts), with
    ``seconds`` and ``peak_mb`` the medians and ``spread`` min / median / max of both."""
    middle = sorted(rounds, key=lambda r: r["seconds"])[(len(rounds) - 1) // 2]
    seconds = spread((r["seconds"] for r in rounds), 3)
    peak = spread((r["peak_mb"] for r in rounds), 1)
    return {**middle, "seconds": seconds["median"], "peak_mb": peak["median"],
            "spread": {"seconds": seconds, "peak_mb": peak},
            "rounds_seconds": [r["seconds"] for r in rounds]}


def run(records: int, workers: int, rate: float, flush_s: float, failure_share: float,
        replicas: int, workdir: Path, rounds: int = 3) -> dict[str, Any]:
    bucket_dir = workdir / "bucket"
    started_on = machine()  # its load average is the one at the start
    print(f"generating {records:,} client records ({workers} workers, {rate:g} req/s, "
          f"a file per {flush_s:g} s flush) + server records and samples ...", flush=True)
    t0 = time.perf_counter()
    gen = generate(bucket_dir, records, workers, rate, flush_s, failure_share, replicas)
    gen["generate_s"] = round(time.perf_counter() - t0, 1)
    print(f"  {sum(gen['files'].values()):,} files, "
          f"{sum(gen['csv_bytes'].values()) / 2**20:,.0f} MB of CSV in {gen['generate_s']} s",
          flush=True)
    bucket = bucket_dir.as_uri()
    limits, same_pool, products = [], [], []
    for round_no in range(1, rounds + 1):
        (workdir / "limit.parquet").unlink(missing_ok=True)
        limits.append(run_child("limit", bucket, str(workdir / "limit.parquet")))
        (workdir / "limit.parquet").unlink(missing_ok=True)
        same_pool.append(run_child("limit", bucket, str(workdir / "limit.parquet"),
                                   pool=PRODUCT_POOL))
        # a fresh warehouse and no tables from the last round: every round does all the work
        for name in ("warehouse.duckdb", "warehouse.duckdb.wal"):
            (workdir / name).unlink(missing_ok=True)
        shutil.rmtree(bucket_dir / "runs" / RUN_ID / "tables", ignore_errors=True)
        products.append(run_child("product", bucket,
                                  "duckdb://" + str(workdir / "warehouse.duckdb"),
                                  json.dumps(gen)))
        if products[-1]["pool"] != PRODUCT_POOL:
            raise SystemExit(f"harvest_run used Arrow's {products[-1]['pool']} pool, not "
                             f"{PRODUCT_POOL}: update PRODUCT_POOL")
        print(f"  round {round_no}: limit (pyarrow read + Parquet write) "
              f"{limits[-1]['seconds']:.2f} s, with {PRODUCT_POOL} {same_pool[-1]['seconds']:.2f}"
              f" s, product (harvest_run) {products[-1]['seconds']:.2f} s, "
              f"{products[-1]['peak_mb']:.0f} MB peak", flush=True)
    limit, product = median_round(limits), median_round(products)
    limit_same_pool = median_round(same_pool)
    rows = gen["records"] + gen["server_records"]
    for step in (product, limit, limit_same_pool):
        step["records_per_s"] = round(gen["records"] / step["seconds"])
        step["rows_per_s"] = round(rows / step["seconds"])
    requests_parquet = product["parquet_bytes"].get("requests", 0)
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {**started_on,
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "rounds": rounds,
        "generated": gen,
        "product": product,
        "limit": limit,
        "limit_same_pool": limit_same_pool,
        "ratio": {"seconds_product_over_limit": round(product["seconds"] / limit["seconds"], 2),
                  "seconds_product_over_same_pool_limit": round(
                      product["seconds"] / limit_same_pool["seconds"], 2),
                  "peak_mb_product_over_limit": round(product["peak_mb"] / limit["peak_mb"], 2)},
        "bytes_per_record": {
            "csv": round(sum(gen["csv_bytes"].values()) / rows, 1),
            "requests_parquet": round(requests_parquet / rows, 1),
            "duckdb": round(product["warehouse_bytes"] / rows, 1)},
    }
    result["targets"] = targets(result)
    return result


def table(result: dict[str, Any]) -> str:
    gen = result["generated"]
    rows = gen["records"] + gen["server_records"]
    lines = [f"{gen['records']:,} client + {gen['server_records']:,} server records "
             f"({rows:,} rows), {sum(gen['files'].values()):,} files; median (min-max) of "
             f"{result.get('rounds', 1)} round(s)",
             f"{'step':<29}{'seconds':>20}{'records/s':>12}{'peak MB':>22}   breakdown (s), "
             "median round"]
    for name, key in (("product (harvest_run)", "product"), ("limit (pyarrow read + write)",
                                                             "limit"),
                      (f"limit with {PRODUCT_POOL}", "limit_same_pool")):
        if key not in result:
            continue
        step = result[key]
        sp = step.get("spread", {})
        parts = ", ".join(f"{k} {v:g}" for k, v in step["breakdown_s"].items())
        lines.append(f"{name:<29}{spread_text(sp.get('seconds'), '{:.2f}'):>20}"
                     f"{step['records_per_s']:>12,}{spread_text(sp.get('peak_mb')):>22}   "
                     f"{parts}")
    ratio = result["ratio"]
    lines.append(f"ratio product / limit (medians): "
                 f"{ratio['seconds_product_over_limit']:.2f}x time, "
                 f"{ratio['peak_mb_product_over_limit']:.2f}x peak memory; over the limit "
                 f"with the product's pool ({PRODUCT_POOL}): "
                 f"{ratio.get('seconds_product_over_same_pool_limit', 0):.2f}x time")
    per = result["bytes_per_record"]
    lines.append(f"bytes per record: CSV {per['csv']:g}, requests.parquet "
                 f"{per['requests_parquet']:g}, DuckDB {per['duckdb']:g}")
    lines += target_lines(result["targets"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Harvest and store throughput (issue 7, 2).")
    parser.add_argument("--records", type=int, default=TARGET_RECORDS,
                        help="client request records to generate")
    parser.add_argument("--workers", type=int, default=4, help="Locust workers writing them")
    parser.add_argument("--rate", type=float, default=5000.0,
                        help="req/s of the simulated run (sets its length and file count)")
    parser.add_argument("--flush-s", type=float, default=2.0,
                        help="seconds between a worker's record files")
    parser.add_argument("--failure-share", type=float, default=0.005)
    parser.add_argument("--replicas", type=int, default=2,
                        help="local server replicas (0: a cloud target, client records only)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of (limit, product) on the same files; judged on the median")
    parser.add_argument("--workdir", default="",
                        help="where to generate (default: a temp dir, removed after)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "harvest.json"))
    parser.add_argument("--step", choices=("product", "limit"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.step:  # a measured child: print its JSON as the last line
        fn = step_product if args.step == "product" else step_limit
        print(json.dumps(fn(*rest[:2], *(json.loads(a) for a in rest[2:]))))
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if min(args.records, args.workers, args.rounds) < 1 or args.replicas < 0 or args.rate <= 0 \
            or args.flush_s <= 0 or not 0 <= args.failure_share < 1:
        parser.error("--records, --workers and --rounds must be >= 1, --replicas >= 0, --rate and "
                     "--flush-s > 0, --failure-share in [0, 1)")
    python = os.path.relpath(sys.executable, REPO)
    python = python if not python.startswith("..") else sys.executable
    command = [python, "bench/harvest.py", *(argv if argv is not None else sys.argv[1:])]
    workdir = Path(args.workdir) if args.workdir else Path(
        tempfile.mkdtemp(prefix="caio-bench-harvest-"))
    if args.workdir and workdir.exists():
        shutil.rmtree(workdir / "bucket", ignore_errors=True)
        for name in ("warehouse.duckdb", "warehouse.duckdb.wal", "limit.parquet"):
            (workdir / name).unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.records, args.workers, args.rate, args.flush_s, args.failure_share,
                     args.replicas, workdir, args.rounds)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["command"] = " ".join(command)
    out = Path(args.out)
    write_result(out, result)
    print(table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
