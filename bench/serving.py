"""Local serving efficiency (issue 7, part 1): the local model server at saturation against
the same SavedModel called in-process by a tight loop on the same cores (the limit).

    .venv/bin/python bench/serving.py [--seconds 30] [--model-dir DIR] [--configs 1x2]

One run, for ``serving_default`` and ``serving_preprocess``, with the ResNet101 V2
architecture (``builtin:resnet_v2_101``, untrained weights, no download; exported once to
``--model-dir``, or to a temp dir removed at the end):

- **limit**: as many processes as the server has replicas, each with the server's
  TensorFlow thread settings, loading the model with the replica's own ``load_model`` and
  calling the same signature function on the same decoded request inputs (the same
  instances per request) in a tight loop, all at once; predictions per second in all.
- **server**: the real supervisor and replicas, started the way the local target starts
  them (``LocalTarget.deploy``), by default with the run defaults of ``replicas`` and
  ``server_threads`` (``spec.param_schema``), driven by a closed-loop client in this
  process (``--concurrency`` threads, keep-alive ``http.client`` connections, the same
  JSON bodies as a load test sends, built by ``build_payload`` from ``test_images/``);
  predictions per second over the window after ``--warmup-seconds``, and this process's
  CPU share (the client must not take the server's cores).
- **overhead**: from the server's own records over the same windows, per request,
  ``latency_ms - model_ms - queue_ms`` (JSON parsing, base64, instance arrays, response
  encoding; wall time, so inflated when the cores are busy), p50 and p99, at saturation
  and on one connection; and its CPU cost alone: the thread CPU time of
  ``ServingApp.handle`` on every body with the model answered from a cache, in a limit
  process (with the fast float path, and without it for comparison).
- the same with dynamic batching (``--batch-max``, ``--batch-timeout-ms``), and any
  other ``--configs`` (``REPLICASxTHREADS``, limit and server both), for the defaults.

Figures are ratios of runs side by side: on a shared machine read them with the load
averages printed next to them. This script installs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import gc
import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from procs import spread, spread_text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins"))

from caio_operators.loadgen.payload import build_payload  # noqa: E402
from caio_operators.spec import param_schema  # noqa: E402

SIGNATURES = ("serving_default", "serving_preprocess")
SOURCE = "builtin:resnet_v2_101"
TARGET_RATIO = 0.90
MODEL_NAME, MODEL_VERSION = "bench", "1"
PREDICT_PATH = f"/v1/models/{MODEL_NAME}/versions/{MODEL_VERSION}:predict"
WORKER = "_limit-worker"  # argv[1] of a limit process (internal)


@dataclass(frozen=True)
class Config:
    replicas: int
    threads: int  # TF intra-op threads per replica (the server's own rule when 0)
    batch_max: int = 0
    batch_timeout_ms: float = 2.0

    @property
    def name(self) -> str:
        base = f"{self.replicas}x{self.threads}"
        return base + (f" batch<={self.batch_max}" if self.batch_max > 1 else "")


def default_config() -> Config:
    """The replicas and threads a run uses unless told otherwise (with the server's rule
    for threads = 0: cores // replicas)."""
    from caio_operators.targets.local_server import threads_per_replica

    schema = param_schema(tempfile.gettempdir(), REPO / "test_images")
    replicas = schema["replicas"]["default"]
    return Config(replicas, threads_per_replica(replicas, schema["server_threads"]["default"]))


# --- model ------------------------------------------------------------------------------


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "plugins"),
                                                    env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def ensure_model(model_dir: Path, source: str) -> float | None:
    """Export ``source`` to ``model_dir`` unless a SavedModel is there; seconds taken."""
    if (model_dir / "saved_model.pb").is_file():
        return None
    print(f"exporting {source} to {model_dir} ...", flush=True)
    started = time.perf_counter()
    code = ("import sys; from caio_operators.model.export import export_serving_model; "
            "export_serving_model(sys.argv[1], sys.argv[2], test_images_uri=sys.argv[3])")
    done = subprocess.run([sys.executable, "-c", code, source, str(model_dir),
                           str(REPO / "test_images")], env=python_env(),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"export of {source} failed:\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - started, 1)


def request_bodies(signature: str, instances: int) -> list[bytes]:
    return [json.dumps({"signature_name": signature, "instances": item["instances"]},
                       separators=(",", ":")).encode()
            for item in build_payload(REPO / "test_images", signature, instances)]


# --- the limit: in-process tight loops ----------------------------------------------------


def limit_worker(argv: list[str]) -> int:
    """One limit process: load like a replica, decode every body, warm up, say "ready";
    then for each "go SIGNATURE SECONDS" line on stdin run a tight loop and report a JSON
    line, until end of input.

    argv: model_dir, intra_threads, bodies_dir, signature...
    """
    model_dir, intra, bodies_dir, *signatures = argv
    from caio_operators.targets.instances import decode_instances
    from caio_operators.targets.replica import load_model

    infos, predict, _ = load_model(model_dir, intra_threads=int(intra), inter_threads=1,
                                   import_keras=False)
    gc.freeze()  # as a replica does after loading (see replica.run)
    inputs: dict[str, list[dict[str, np.ndarray]]] = {}
    for signature in signatures:
        info = infos[signature]
        inputs[signature] = [
            decode_instances(info, json.loads(path.read_bytes())["instances"])
            for path in sorted(Path(bodies_dir, signature).glob("*.json"))]
        for item in inputs[signature]:  # warm up on every input
            predict(signature, item)
    print("ready", flush=True)
    for line in sys.stdin:
        command, signature, seconds = line.split()
        if command == "overhead":
            print(json.dumps([overhead_cpu_ms(infos, predict, Path(bodies_dir, signature),
                                              signature, int(seconds), general)
                              for general in (False, True)]), flush=True)
            continue
        items = inputs[signature]
        count = predictions = 0
        started, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - started < float(seconds):
            item = items[count % len(items)]
            predict(signature, item)
            count += 1
            predictions += len(next(iter(item.values())))
        elapsed = time.perf_counter() - started
        print(json.dumps({"predictions": predictions, "seconds": elapsed,
                          "cpu_seconds": time.process_time() - cpu0}), flush=True)
    return 0


def overhead_cpu_ms(infos: dict, predict, bodies_dir: Path, signature: str,
                    passes: int, general: bool = False) -> list[float]:
    """CPU ms that the server's request handling (`ServingApp.handle`: JSON, base64,
    instance arrays, response encoding) takes per body, without the model call: after one
    real call the model answers with those outputs. Thread CPU time, so that other
    processes on the machine do not inflate it. ``general``: with the fast float path
    off (every body parsed by json.loads), to show what that path saves."""
    from caio_operators.targets.serving_app import ServingApp

    outputs: dict[str, dict] = {}

    def model_once(name: str, inputs: dict) -> dict:
        if name not in outputs:
            outputs[name] = predict(name, inputs)
        return outputs[name]

    app = ServingApp(model_name=MODEL_NAME, model_version=MODEL_VERSION, signatures=infos,
                     predict=model_once)
    if general:
        app._fast_inputs = lambda *_: None  # every body through the general path
    bodies = [path.read_bytes() for path in sorted(bodies_dir.glob("*.json"))]
    app.handle("POST", PREDICT_PATH, bodies[0])
    timings = []
    for _ in range(passes):
        for body in bodies:
            started = time.thread_time()
            reply = app.handle("POST", PREDICT_PATH, body)
            timings.append((time.thread_time() - started) * 1000)
            if reply.status != 200:
                raise SystemExit(f"{signature}: {reply.status} {reply.body[:300]!r}")
    return timings


class Limit:
    """The limit: ``config.replicas`` processes with the replicas' thread settings, loaded
    and warm, each running a tight loop on the same signature at once when asked."""

    def __init__(self, model_dir: Path, config: Config, bodies_dir: Path,
                 signatures: list[str]) -> None:
        argv = [sys.executable, __file__, WORKER, str(model_dir), str(config.threads),
                str(bodies_dir), *signatures]
        self.procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True, env=python_env())
                      for _ in range(config.replicas)]
        for proc in self.procs:
            line = proc.stdout.readline().strip()
            if line != "ready":
                self.close()
                raise SystemExit(f"a limit process failed to start (exit {proc.poll()})")

    def window(self, signature: str, seconds: float) -> dict[str, Any]:
        load = os.getloadavg()[0]
        for proc in self.procs:
            proc.stdin.write(f"go {signature} {seconds}\n")
            proc.stdin.flush()
        reports = [json.loads(proc.stdout.readline()) for proc in self.procs]
        window = max(r["seconds"] for r in reports)
        return {"pps": sum(r["predictions"] / r["seconds"] for r in reports),
                "predictions": sum(r["predictions"] for r in reports), "seconds": window,
                "cpu_seconds": sum(r["cpu_seconds"] for r in reports), "loadavg": load}

    def overhead(self, signature: str, passes: int = 5) -> dict[str, float]:
        """Request handling CPU ms without the model (`overhead_cpu_ms`), p50 and p99."""
        proc = self.procs[0]
        proc.stdin.write(f"overhead {signature} {passes}\n")
        proc.stdin.flush()
        fast, general = (np.array(t) for t in json.loads(proc.stdout.readline()))
        return {"cpu_p50_ms": round(float(np.percentile(fast, 50)), 2),
                "cpu_p99_ms": round(float(np.percentile(fast, 99)), 2),
                "general_path_cpu_p50_ms": round(float(np.percentile(general, 50)), 2),
                "general_path_cpu_p99_ms": round(float(np.percentile(general, 99)), 2),
                "requests": len(fast)}

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- the server, driven by a closed-loop client ------------------------------------------


def drive(port: int, bodies: list[bytes], instances: int, concurrency: int,
          warmup_s: float, seconds: float, server_pids: list[int]) -> dict[str, Any]:
    """Closed loop: ``concurrency`` keep-alive connections, each sending its next body as
    soon as the last answer came. Counts answers that complete inside the window, and the
    CPU seconds that this process (the client) and the server used in it."""
    stop = threading.Event()
    done: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def user(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Content-Type": "application/json"}
        n = index
        try:
            while not stop.is_set():
                conn.request("POST", PREDICT_PATH, bodies[n % len(bodies)], headers)
                response = conn.getresponse()
                payload = response.read()
                if response.status != 200:
                    errors.append(f"{response.status}: {payload[:200]!r}")
                else:
                    done[index].append(time.time())
                n += concurrency
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(warmup_s)
    load = os.getloadavg()[0]
    start, cpu0, server0 = time.time(), time.process_time(), process_cpu(server_pids)
    time.sleep(seconds)
    end, cpu1, server1 = time.time(), time.process_time(), process_cpu(server_pids)
    stop.set()
    for thread in threads:
        thread.join(timeout=300)
    answered = sum(start <= t < end for times in done for t in times)
    window = end - start
    return {"window": (start, end), "pps": answered * instances / window,
            "predictions": answered * instances, "seconds": window,
            "cpu_seconds": server1 - server0, "errors": len(errors), "first_error": errors[:1],
            "client_cpu_share": (cpu1 - cpu0) / window, "loadavg": load}


def process_cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def read_records(records_dir: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(records_dir.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def overhead_stats(rows: list[dict[str, str]], signature: str,
                   windows: list[tuple[float, float]]) -> dict[str, Any]:
    """Server-side overhead and model time (ms) of the windows' successful requests."""
    kept = [r for r in rows if r["signature"] == signature and r["status_code"] == "200"
            and r.get("model_ms") and any(a <= float(r["ts"]) < b for a, b in windows)]
    if not kept:
        return {"records": 0}
    latency = np.array([float(r["latency_ms"]) for r in kept])
    model = np.array([float(r["model_ms"]) for r in kept])
    queue = np.array([float(r["queue_ms"]) for r in kept])
    overhead = latency - model - queue

    def pct(values: np.ndarray, q: float) -> float:
        return round(float(np.percentile(values, q)), 2)

    return {"records": len(kept), "overhead_p50_ms": pct(overhead, 50),
            "overhead_p99_ms": pct(overhead, 99), "model_p50_ms": pct(model, 50),
            "queue_p50_ms": pct(queue, 50), "latency_p50_ms": pct(latency, 50)}


def summarize(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one mode: median predictions/s (and its spread), predictions per
    CPU-second (over all rounds and per round), cores used."""
    seconds = sum(w["seconds"] for w in windows)
    cpu = sum(w["cpu_seconds"] for w in windows)
    predictions = sum(w["predictions"] for w in windows)
    pps = spread((w["pps"] for w in windows), 3)
    return {"pps": pps["median"], "pps_spread": pps,
            "rounds_pps": [round(w["pps"], 3) for w in windows],
            "rounds_pred_per_cpu_s": [round(w["predictions"] / w["cpu_seconds"], 3)
                                      if w["cpu_seconds"] else None for w in windows],
            "predictions": predictions, "seconds": round(seconds, 1),
            "cpu_share": round(cpu / seconds, 2) if seconds else None,
            "pred_per_cpu_s": round(predictions / cpu, 3) if cpu else None,
            "loadavg": [round(w["loadavg"], 2) for w in windows]}


def measure_config(model_dir: Path, config: Config, bodies: dict[str, list[bytes]],
                   bodies_dir: Path, args: argparse.Namespace, work: Path
                   ) -> dict[str, dict[str, Any]]:
    """Limit and server both up; per signature, ``--rounds`` alternating windows (limit,
    then server: both see the same machine), then a one-connection server window."""
    from caio_operators.targets.local import LocalTarget

    signatures = list(bodies)
    concurrency = args.concurrency or 4 * config.replicas
    limit = Limit(model_dir, config, bodies_dir, signatures)
    target = LocalTarget()
    try:
        deployment = target.deploy(
            model_uri=str(model_dir), model_name=MODEL_NAME, model_version=MODEL_VERSION,
            replicas=config.replicas, threads_per_replica=config.threads,
            server_dir=str(work / "server"), startup_timeout_s=900, max_lifetime_s=3600,
            batch_max=config.batch_max, batch_timeout_ms=config.batch_timeout_ms)
    except BaseException:
        limit.close()
        raise
    results: dict[str, dict[str, Any]] = {}
    try:
        pids = [deployment["pid"], *deployment["replica_pids"]]
        port = deployment["port"]
        for signature in signatures:
            limits, servers = [], []
            for _ in range(args.rounds):
                limits.append(limit.window(signature, args.seconds))
                servers.append(drive(port, bodies[signature], args.instances, concurrency,
                                     args.warmup_seconds, args.seconds, pids))
            # One connection: the overhead without other requests competing for the cores.
            alone = drive(port, bodies[signature], args.instances, 1, 1.0,
                          max(5.0, args.seconds / 3), pids)
            results[signature] = {"limit": {**summarize(limits),
                                            "overhead_cpu": limit.overhead(signature)},
                                  "server": {
                **summarize(servers), "concurrency": concurrency,
                "errors": sum(w["errors"] for w in servers),
                "first_error": next((w["first_error"] for w in servers if w["errors"]), []),
                "client_cpu_share": round(float(np.mean(
                    [w["client_cpu_share"] for w in servers])), 3),
                "windows": [w["window"] for w in servers], "unloaded_window": alone["window"]}}
    finally:
        target.undeploy(deployment)
        limit.close()
    rows = read_records(Path(deployment["records_dir"]))
    for result in results.values():
        server = result["server"]
        windows = server.pop("windows")
        signature = next(s for s, r in results.items() if r is result)
        server.update(overhead_stats(rows, signature, windows))
        server["unloaded"] = overhead_stats(rows, signature, [server.pop("unloaded_window")])
    return results


# --- report ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from importlib import metadata

    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = found.group(1).strip() if found else ""
    return {"cores": len(os.sched_getaffinity(0)), "cpu": model,
            "python": platform.python_version(), "tensorflow": metadata.version("tensorflow"),
            "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def make_row(config: Config, signature: str, limit: dict[str, Any],
             server: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    unloaded = server.get("unloaded", {})
    # each round is a limit window and a server window side by side: the verdict is on the
    # median of the rounds' ratios
    rounds_ratio = [ratio(s, lim) for s, lim in zip(server["rounds_pps"], limit["rounds_pps"],
                                                     strict=True)]
    rounds_ratio_cpu = [ratio(s, lim) for s, lim in zip(
        server["rounds_pred_per_cpu_s"], limit["rounds_pred_per_cpu_s"], strict=True)]
    by_round, by_round_cpu = spread(rounds_ratio, 3), spread(rounds_ratio_cpu, 3)
    return {
        "config": config.name, "replicas": config.replicas, "threads": config.threads,
        "batch_max": config.batch_max,
        "batch_timeout_ms": config.batch_timeout_ms if config.batch_max > 1 else None,
        "signature": signature,
        "limit_pps": limit["pps"], "server_pps": server["pps"],
        "ratio": by_round["median"] if by_round else None,
        "ratio_per_cpu": by_round_cpu["median"] if by_round_cpu else None,
        "ratio_spread": by_round, "ratio_per_cpu_spread": by_round_cpu,
        "rounds_ratio": rounds_ratio,
        "limit_cpu_share": limit["cpu_share"], "server_cpu_share": server["cpu_share"],
        "overhead_p50_ms": server.get("overhead_p50_ms"),
        "overhead_p99_ms": server.get("overhead_p99_ms"),
        "overhead_unloaded_p50_ms": unloaded.get("overhead_p50_ms"),
        "overhead_unloaded_p99_ms": unloaded.get("overhead_p99_ms"),
        "overhead_cpu_p50_ms": limit["overhead_cpu"]["cpu_p50_ms"],
        "overhead_cpu_p99_ms": limit["overhead_cpu"]["cpu_p99_ms"],
        "model_p50_ms": server.get("model_p50_ms"),
        "client_cpu_share": server["client_cpu_share"],
        "limit_loadavg": float(np.mean(limit["loadavg"])),
        "server_loadavg": float(np.mean(server["loadavg"])),
        "limit": limit, "server": server}


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| config | signature | limit pred/s | server pred/s | server / limit | per CPU-s: "
        "server / limit | cores used (limit / server) | overhead p50 / p99 ms (saturated) | "
        "overhead p50 / p99 ms (one connection) | overhead CPU p50 / p99 ms | model p50 ms "
        "| client CPU | load avg (limit / server) |",
        "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['config']} | `{r['signature']}` | {_fmt(r['limit_pps'], '.2f')} | "
            f"{_fmt(r['server_pps'], '.2f')} | {_fmt(r['ratio'], '.2f')} | "
            f"{_fmt(r['ratio_per_cpu'], '.2f')} | {_fmt(r['limit_cpu_share'], '.2f')} / "
            f"{_fmt(r['server_cpu_share'], '.2f')} | {_fmt(r['overhead_p50_ms'], '.1f')} / "
            f"{_fmt(r['overhead_p99_ms'], '.1f')} | "
            f"{_fmt(r['overhead_unloaded_p50_ms'], '.1f')} / "
            f"{_fmt(r['overhead_unloaded_p99_ms'], '.1f')} | "
            f"{_fmt(r['overhead_cpu_p50_ms'], '.1f')} / {_fmt(r['overhead_cpu_p99_ms'], '.1f')} | "
            f"{_fmt(r['model_p50_ms'], '.0f')} | {r['client_cpu_share']:.1%} | "
            f"{_fmt(r['limit_loadavg'], '.1f')} / {_fmt(r['server_loadavg'], '.1f')} |")
    return "\n".join(lines)


def parse_config(text: str) -> Config:
    found = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not found or int(found.group(1)) < 1 or int(found.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give REPLICASxTHREADS, e.g. 1x2")
    return Config(int(found.group(1)), int(found.group(2)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/serving.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="SavedModel of --source: reused if there, else exported "
                        "there and kept (default: a temp dir, removed at the end)")
    parser.add_argument("--source", default=SOURCE,
                        help=f"model to export (default {SOURCE}; builtin:tiny for a smoke "
                        "run); ignored when --model-dir holds a SavedModel")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="one measured window (default 20)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating limit/server windows per signature and config "
                        "(default 3); judged on the median round's ratio")
    parser.add_argument("--warmup-seconds", type=float, default=5.0,
                        help="server load before each server window (default 5)")
    parser.add_argument("--signatures", nargs="+", choices=SIGNATURES, default=list(SIGNATURES))
    parser.add_argument("--instances", type=int, default=1,
                        help="instances per request (default 1, the run default)")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="client connections; 0: 4 per replica")
    parser.add_argument("--batch-max", type=int, default=4,
                        help="dynamic batching variant: instances per model call (0: skip it)")
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--configs", nargs="*", type=parse_config, default=[],
                        help="other REPLICASxTHREADS settings to measure (limit and server), "
                        "e.g. 1x2")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serving.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER]:
        return limit_worker(argv[1:])
    args = build_parser().parse_args(argv)
    default = default_config()
    configs = [default]
    if args.batch_max > 1:
        configs.append(Config(default.replicas, default.threads, args.batch_max,
                              args.batch_timeout_ms))
    configs += [c for c in args.configs if c not in configs]
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/serving.py", *argv]),
        "machine": machine(), "source": args.source, "default_config": default.name,
        "seconds": args.seconds, "rounds": args.rounds, "warmup_seconds": args.warmup_seconds,
        "instances_per_request": args.instances, "target_ratio": TARGET_RATIO}
    with tempfile.TemporaryDirectory(prefix="caio-bench-serving-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or work / "model" / "1"
        result["export_seconds"] = ensure_model(model_dir, args.source)
        bodies = {s: request_bodies(s, args.instances) for s in args.signatures}
        bodies_dir = work / "bodies"
        for signature, items in bodies.items():
            (bodies_dir / signature).mkdir(parents=True)
            for i, body in enumerate(items):
                (bodies_dir / signature / f"{i:03d}.json").write_bytes(body)
        rows: list[dict[str, Any]] = []
        for config in configs:
            print(f"{config.name}: limit and server, {args.rounds} alternating rounds of "
                  f"{args.seconds:g} s per signature ...", flush=True)
            measured = measure_config(model_dir, config, bodies, bodies_dir, args,
                                      work / f"config-{len(rows)}")
            for signature in args.signatures:
                rows.append(make_row(config, signature, **measured[signature]))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
        if args.model_dir is None:
            shutil.rmtree(model_dir, ignore_errors=True)
    result["rows"] = rows
    result["targets"] = [{"signature": r["signature"], "config": r["config"],
                          "ratio": r["ratio"], "met": (r["ratio"] or 0) >= TARGET_RATIO,
                          "ratio_spread": r["ratio_spread"],
                          "ratio_per_cpu_spread": r["ratio_per_cpu_spread"],
                          "ratio_per_cpu": r["ratio_per_cpu"],
                          "met_per_cpu": (r["ratio_per_cpu"] or 0) >= TARGET_RATIO}
                         for r in rows if r["config"] == default.name]
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print()
    print(table(rows))
    for t in result["targets"]:
        print(f"target server >= {TARGET_RATIO:.2f} x limit, {t['signature']} ({t['config']}), "
              f"median (min-max) of {args.rounds} rounds: "
              f"{spread_text(t['ratio_spread'], '{:.2f}')} pred/s "
              f"({'met' if t['met'] else 'NOT met'}), "
              f"{spread_text(t['ratio_per_cpu_spread'], '{:.2f}')} per CPU-second "
              f"({'met' if t['met_per_cpu'] else 'NOT met'})")
    print(f"\nload average at start {result['machine']['loadavg_at_start']}, at end "
          f"{result['machine']['loadavg_at_end']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
