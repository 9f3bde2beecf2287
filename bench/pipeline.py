"""Pipeline overhead (issue 7, part 3): what the DAG costs beyond the load itself, and how
fast the DAG folder parses.

    .venv/bin/python bench/pipeline.py [--model-source builtin:mobilenet_v3_small]
        [--duration-s 30] [--rounds 3] [--parse-repeats 5] [--out bench/results/pipeline.json]

What one run does:

1. **Overhead**: a fresh Airflow home in a temp dir (``airflow db migrate``, not timed),
   then ``airflow dags test caio_load_test`` with the small architecture and a constant
   load of ``--duration-s`` seconds, bucket and DuckDB warehouse in the temp dir. Wall time
   of the command; the load window from the run's ``runs`` row (``duration_s``); each task's
   start, end and duration from Airflow's metadata DB (``task_instance``); the gaps: from
   the command's start to the first task (CLI and DAG start-up) and between tasks.
   ``--rounds`` times (default 3), each in a fresh Airflow home: min / median / max of the
   overhead, the median round's breakdown, the target on the median.
2. **Parsing**: each file of ``dags/`` parsed by Airflow's ``DagBag`` in a fresh
   interpreter (Airflow itself imported first, not timed), ``--parse-repeats`` times; the
   median is the figure. Also the bare ``runpy`` import of the file, as the DAG-integrity
   test does.

Targets (issue 7): wall time minus load time under 60 s; the DAG folder parses in under 1 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from procs import spread, spread_text, target_lines, write_result

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "caio_load_test"
TARGET_OVERHEAD_S = 60.0
TARGET_PARSE_S = 1.0
PARSE_PROBE = """
import json, runpy, sys, time
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
path = sys.argv[1]
t = time.perf_counter()
runpy.run_path(path)
imported = time.perf_counter() - t
t = time.perf_counter()
bag = DagBag(dag_folder=path)
parsed = time.perf_counter() - t
print(json.dumps({"runpy_s": imported, "dagbag_s": parsed, "dags": sorted(bag.dags),
                  "errors": {k: str(v)[:300] for k, v in bag.import_errors.items()}}))
"""


def airflow_env(home: Path) -> dict[str, str]:
    return {**os.environ, "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "CAIO_HOME": str(home / "caio"), "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "plugins"),
                                                        os.environ.get("PYTHONPATH")]))}


def run_conf(home: Path, model_source: str, duration_s: int, users: int) -> dict[str, Any]:
    return {"model_name": "bench", "model_version": "v1", "model_source": model_source,
            "load_shape": "constant", "users": users, "spawn_rate": users,
            "duration_s": duration_s, "replicas": 2, "workers": 1,
            "bucket": (home / "bucket").as_uri(),
            "warehouse": f"duckdb://{home / 'warehouse.duckdb'}"}


def _utc(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    value = dt.datetime.fromisoformat(str(text))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def task_times(db: Path) -> list[dict[str, Any]]:
    """Each task instance of the (only) run: task, state, start, end, seconds."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT task_id, state, start_date, end_date FROM task_instance "
                           "WHERE dag_id = ? ORDER BY start_date", (DAG_ID,)).fetchall()
    out = []
    for task, state, start, end in rows:
        start, end = _utc(start), _utc(end)
        out.append({"task": task, "state": state, "start": start, "end": end,
                    "seconds": (end - start).total_seconds() if start and end else None})
    return out


def load_window(warehouse: Path) -> dict[str, Any]:
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as con:
        row = con.execute("SELECT run_id, status, duration_s, requests, throughput_rps "
                          "FROM runs").fetchone()
    return dict(zip(("run_id", "status", "duration_s", "requests", "throughput_rps"), row,
                    strict=True))


def measure_overhead(home: Path, model_source: str, duration_s: int, users: int,
                     timeout_s: int, log_path: str = "") -> dict[str, Any]:
    env = airflow_env(home)
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True,
                             text=True, check=False, timeout=600)
    migrate_s = time.perf_counter() - t0
    if migrate.returncode != 0:
        raise SystemExit(f"airflow db migrate failed:\n{migrate.stderr[-3000:]}")
    conf = run_conf(home, model_source, duration_s, users)
    print(f"airflow dags test {DAG_ID} ({model_source}, constant load {duration_s} s, "
          f"{users} users) ...", flush=True)
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    proc = subprocess.run([AIRFLOW, "dags", "test", DAG_ID, "--conf", json.dumps(conf)],
                          env=env, capture_output=True, text=True, check=False,
                          timeout=timeout_s)
    wall = time.perf_counter() - t0
    ended = started + dt.timedelta(seconds=wall)
    if log_path:
        Path(log_path).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"airflow dags test failed (exit {proc.returncode}); log tail:\n"
                         f"{(proc.stdout + proc.stderr)[-4000:]}")
    tasks = task_times(home / "airflow" / "airflow.db")
    load = load_window(home / "warehouse.duckdb")
    timed = [t for t in tasks if t["start"] and t["end"]]
    first = min(t["start"] for t in timed)
    last = max(t["end"] for t in timed)
    busy = _union_seconds([(t["start"], t["end"]) for t in timed])
    per_task = [{"task": t["task"], "state": t["state"],
                 "start_offset_s": round((t["start"] - started).total_seconds(), 2),
                 "seconds": round(t["seconds"], 2)} for t in timed]
    load_task = next((t for t in per_task if t["task"] == "load"), None)
    return {
        "conf": conf, "db_migrate_s": round(migrate_s, 1), "wall_s": round(wall, 2),
        "load_s": round(load["duration_s"], 2),
        "overhead_s": round(wall - load["duration_s"], 2),
        "run": load,
        "tasks": per_task,
        "startup_s": round((first - started).total_seconds(), 2),
        "between_tasks_s": round((last - first).total_seconds() - busy, 2),
        "after_last_task_s": round((ended - last).total_seconds(), 2),
        "load_task_beyond_window_s": round(load_task["seconds"] - load["duration_s"], 2)
        if load_task else None,
    }


def overhead_rounds(home: Path, rounds: int, *args: Any) -> dict[str, Any]:
    """``measure_overhead`` ``rounds`` times, each in a fresh Airflow home under ``home``:
    the round of median overhead, with the spread of the overhead and of the wall time."""
    results = []
    for round_no in range(1, rounds + 1):
        print(f"round {round_no} of {rounds}:", flush=True)
        results.append(measure_overhead(home / f"round-{round_no}", *args))
        print(f"  wall {results[-1]['wall_s']:.1f} s, overhead {results[-1]['overhead_s']:.1f} s",
              flush=True)
    middle = sorted(results, key=lambda r: r["overhead_s"])[(rounds - 1) // 2]
    return {**middle, "rounds": rounds,
            "rounds_overhead_s": [r["overhead_s"] for r in results],
            "spread": {key: spread((r[key] for r in results), 2)
                       for key in ("overhead_s", "wall_s", "startup_s")}}


def _union_seconds(spans: list[tuple[dt.datetime, dt.datetime]]) -> float:
    """Seconds covered by at least one span (tasks may overlap)."""
    total, current = 0.0, None
    for start, end in sorted(spans):
        if current is None or start > current[1]:
            if current:
                total += (current[1] - current[0]).total_seconds()
            current = [start, end]
        else:
            current[1] = max(current[1], end)
    if current:
        total += (current[1] - current[0]).total_seconds()
    return total


def measure_parse(repeats: int) -> dict[str, Any]:
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PYTHONPATH": str(REPO / "plugins")}
    files = {}
    for path in sorted((REPO / "dags").glob("*.py")):
        runs = []
        for _ in range(repeats):
            proc = subprocess.run([sys.executable, "-c", PARSE_PROBE, str(path)], env=env,
                                  capture_output=True, text=True, check=False, timeout=300,
                                  cwd=REPO)
            if proc.returncode != 0:
                raise SystemExit(f"parsing {path.name} failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        files[path.name] = {
            "dagbag_s": round(statistics.median(r["dagbag_s"] for r in runs), 3),
            "spread": spread((r["dagbag_s"] for r in runs), 3),
            "runpy_s": round(statistics.median(r["runpy_s"] for r in runs), 3),
            "dagbag_runs_s": [round(r["dagbag_s"], 3) for r in runs],
            "dags": runs[-1]["dags"], "errors": runs[-1]["errors"]}
    return {"repeats": repeats, "files": files,
            "folder_dagbag_s": round(sum(f["dagbag_s"] for f in files.values()), 3)}


def machine() -> dict[str, Any]:
    versions = {name: metadata.version(name) for name in ("apache-airflow", "locust",
                                                           "tensorflow")}
    return {"cores": os.cpu_count(), "python": platform.python_version(), **versions,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if result.get("overhead"):
        over = result["overhead"]
        value = (over.get("spread") or {}).get("overhead_s", {}).get("median",
                                                                    over["overhead_s"])
        out.append({"name": f"dags test wall minus load < {TARGET_OVERHEAD_S:g} s (median)",
                    "value": value, "limit": TARGET_OVERHEAD_S,
                    "met": value < TARGET_OVERHEAD_S})
    value = result["parse"]["folder_dagbag_s"]
    out.append({"name": f"DAG folder parses (DagBag) in < {TARGET_PARSE_S:g} s",
                "value": value, "limit": TARGET_PARSE_S, "met": value < TARGET_PARSE_S})
    return out


def table(result: dict[str, Any]) -> str:
    lines = []
    over = result.get("overhead")
    if over:
        sp = over.get("spread") or {}
        lines += [f"overhead over {over.get('rounds', 1)} round(s), median (min-max): "
                  f"{spread_text(sp.get('overhead_s'), '{:.1f}')} s; wall "
                  f"{spread_text(sp.get('wall_s'), '{:.1f}')} s. The median round:",
                  f"wall {over['wall_s']:.1f} s, load {over['load_s']:.1f} s, "
                  f"overhead {over['overhead_s']:.1f} s (CLI start-up to first task "
                  f"{over['startup_s']:.1f} s, between tasks {over['between_tasks_s']:.1f} s, "
                  f"after the last {over['after_last_task_s']:.1f} s)",
                  f"{'task':<18}{'starts at s':>12}{'seconds':>10}  state"]
        lines += [f"{t['task']:<18}{t['start_offset_s']:>12.1f}{t['seconds']:>10.1f}  "
                  f"{t['state']}" for t in over["tasks"]]
    for name, parsed in result["parse"]["files"].items():
        lines.append(f"parse {name}: DagBag {spread_text(parsed.get('spread'), '{:.3f}')} s, "
                     f"runpy {parsed['runpy_s']:.3f} s (median (min-max) of "
                     f"{result['parse']['repeats']})")
    lines += target_lines(result["targets"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pipeline overhead (issue 7, part 3).")
    parser.add_argument("--model-source", default="builtin:mobilenet_v3_small",
                        help="builtin:mobilenet_v3_small (default) or builtin:tiny")
    parser.add_argument("--duration-s", type=int, default=30, help="constant load, seconds")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3,
                        help="DAG runs, each in a fresh Airflow home; judged on the median")
    parser.add_argument("--parse-repeats", type=int, default=5)
    parser.add_argument("--parse-only", action="store_true", help="skip the DAG run")
    parser.add_argument("--timeout-s", type=int, default=1800)
    parser.add_argument("--log", default="", help="also keep the dags test log here")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "pipeline.json"))
    args = parser.parse_args(argv)
    if args.duration_s < 5 or min(args.users, args.parse_repeats, args.rounds) < 1:
        parser.error("--duration-s must be >= 5, --users, --rounds and --parse-repeats >= 1")
    python = os.path.relpath(sys.executable, REPO)
    python = python if not python.startswith("..") else sys.executable
    command = [python, "bench/pipeline.py", *(argv if argv is not None else sys.argv[1:])]
    result: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "machine": machine()}
    print(f"parsing dags/ ({args.parse_repeats} fresh interpreters per file) ...", flush=True)
    result["parse"] = measure_parse(args.parse_repeats)
    if not args.parse_only:
        with tempfile.TemporaryDirectory(prefix="caio-bench-pipeline-") as tmp:
            result["overhead"] = overhead_rounds(Path(tmp), args.rounds, args.model_source,
                                                 args.duration_s, args.users, args.timeout_s,
                                                 args.log)
    result["targets"] = targets(result)
    result["command"] = " ".join(command)
    out = Path(args.out)
    write_result(out, result)
    print(table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
