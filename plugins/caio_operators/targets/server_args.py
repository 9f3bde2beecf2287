"""The local model server's command line: its options, their checks and defaults.

One parser for both roles of ``caio-serve`` (``local_server.py``): the supervisor's options,
and the internal ones with which the supervisor (``supervisor.py``) starts each replica
(``replica.py``). Also what the Airflow side needs before starting a server (``local.py``):
the defaults, the SavedModel check and the threads per replica. No TensorFlow here.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from caio_operators.targets import autoscaler, scaling

# The module that ``python -m`` runs, for the server and for each of its replicas.
MODULE = "caio_operators.targets.local_server"
DEFAULT_MAX_BODY_BYTES = 10 * 2**20
# Once a request has begun, its head and body must arrive within this, however slowly the
# bytes trickle in: a slow client (slowloris) gets a 408 instead of holding a thread.
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_MAX_LIFETIME_S = 6 * 3600
DEFAULT_BATCH_TIMEOUT_MS = 2.0


class ModelDirError(ValueError):
    """The model directory is not a SavedModel."""


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """``model_dir`` as a Path if it holds a SavedModel, else a ModelDirError saying why."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelDirError(
            f"model directory {str(path)!r} does not exist or is not a directory; export the "
            "model first or fix the model path")
    if not any((path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
        raise ModelDirError(
            f"{str(path)!r} is not a TensorFlow SavedModel: it has no saved_model.pb; point "
            "to the directory that the export wrote")
    return path


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_replica(replicas: int, requested: int = 0) -> int:
    """TF intra-op threads per replica: ``requested``, or the cores shared out evenly."""
    if requested > 0:
        return requested
    return max(1, cpu_count() // max(1, replicas))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caio-serve", description="Serve a TensorFlow SavedModel over the AI Platform, "
        "Vertex AI and TF Serving REST predict routes with N replica processes.")
    parser.add_argument("--model-dir", required=True, help="SavedModel directory")
    parser.add_argument("--model-name", default="model", help="model name in the routes")
    parser.add_argument("--model-version", default="1", help="model version in the routes")
    parser.add_argument("--replicas", type=int, default=1, help="replica processes")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback)")
    parser.add_argument("--port", type=int, default=8501, help="port; 0 picks a free one")
    parser.add_argument("--records-dir", default="", help="request records (default: none)")
    parser.add_argument("--samples-dir", default="", help="CPU/RSS samples (default: none)")
    parser.add_argument("--ready-file", default="", help="JSON written once all replicas serve")
    parser.add_argument("--max-lifetime-s", type=float, default=DEFAULT_MAX_LIFETIME_S,
                        help="exit after this many seconds, whatever happens")
    parser.add_argument("--threads-per-replica", type=int, default=0,
                        help="TF intra-op threads per replica; 0: cores // replicas")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="larger request bodies get 413")
    parser.add_argument("--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                        help="a request's head and body must arrive within this from its "
                        "first byte, else 408")
    parser.add_argument("--batch-max", type=int, default=0,
                        help="dynamic batching: up to this many instances of concurrent "
                        "requests per model call; 0 or 1: off (each request its own call)")
    parser.add_argument("--batch-timeout-ms", type=float, default=DEFAULT_BATCH_TIMEOUT_MS,
                        help="dynamic batching: how long the oldest queued request waits "
                        "for others to fill its batch")
    parser.add_argument("--gpus", default="",
                        help="GPUs of the replicas: '' (not pinned), 'none', 'all' or NVML "
                        "indices like '0,1' (replica i gets device i mod n; metrics/gpu.py)")
    parser.add_argument("--gpu-samples-dir", default="",
                        help="GPU utilisation/memory/power samples (default: none)")
    parser.add_argument("--min-replicas", type=int, default=0,
                        help="autoscaling: the fewest replicas (0: --replicas)")
    parser.add_argument("--max-replicas", type=int, default=0,
                        help="autoscaling: the most replicas (0: --replicas); above "
                        "--min-replicas, the server scales on --autoscaling-target and "
                        "--replicas is the starting count")
    parser.add_argument("--autoscaling-target", type=float, default=60.0,
                        help="autoscaling: mean CPU utilisation (percent of each replica's "
                        "threads) to keep the replicas at")
    parser.add_argument("--scale-up-window-s", type=float,
                        default=autoscaler.DEFAULT_UP_WINDOW_S,
                        help="autoscaling: scale out once above the target this long")
    parser.add_argument("--scale-down-window-s", type=float,
                        default=autoscaler.DEFAULT_DOWN_WINDOW_S,
                        help="autoscaling: scale in once below the target this long, and "
                        "this long after the last change (cool-down)")
    parser.add_argument("--drain-timeout-s", type=float,
                        default=scaling.DEFAULT_DRAIN_TIMEOUT_S,
                        help="autoscaling: stop a draining replica after this long even if "
                        "it still holds connections")
    parser.add_argument("--scaling-dir", default="",
                        help="replica count changes (scaling records; default: none)")
    parser.add_argument("--import-keras", action="store_true",
                        help="let TensorFlow import Keras (slower start; for models that "
                        "need Keras to load)")
    # Internal: how the supervisor starts a replica.
    parser.add_argument("--replica-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--channel-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--admin-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--intra-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--inter-threads", type=int, default=1, help=argparse.SUPPRESS)
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.replicas < 1:
        parser.error(f"--replicas must be at least 1, got {args.replicas}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0..65535, got {args.port}")
    if args.max_lifetime_s <= 0:
        parser.error(f"--max-lifetime-s must be positive, got {args.max_lifetime_s}")
    if args.max_body_bytes < 1:
        parser.error(f"--max-body-bytes must be positive, got {args.max_body_bytes}")
    if args.request_timeout_s <= 0:
        parser.error(f"--request-timeout-s must be positive, got {args.request_timeout_s}")
    if args.threads_per_replica < 0:
        parser.error(f"--threads-per-replica must be 0 (auto) or more, "
                     f"got {args.threads_per_replica}")
    if args.batch_max < 0:
        parser.error(f"--batch-max must be 0 (off) or more, got {args.batch_max}")
    if args.batch_timeout_ms < 0:
        parser.error(f"--batch-timeout-ms must be 0 or more, got {args.batch_timeout_ms}")
    if args.drain_timeout_s <= 0:
        parser.error(f"--drain-timeout-s must be positive, got {args.drain_timeout_s}")
    try:
        policy = scaling_policy(args)
        if policy is not None:
            autoscaler.start(policy, args.replicas)
    except ValueError as exc:
        parser.error(f"autoscaling: {exc}")


def scaling_policy(args: argparse.Namespace) -> autoscaler.Policy | None:
    """The autoscaler's policy, or None for a fixed number of replicas."""
    low, high = args.min_replicas or args.replicas, args.max_replicas or args.replicas
    if low == high == args.replicas:
        return None
    return autoscaler.Policy(
        min_replicas=low, max_replicas=high, target_pct=args.autoscaling_target,
        up_window_s=args.scale_up_window_s, down_window_s=args.scale_down_window_s)
