"""The local model server: a supervisor and N replica processes serving one SavedModel.

Serve an exported model and probe it (the ready file tells the port when ``--port 0``)::

    caio-serve --model-dir /tmp/bucket/models/demo/1 --model-name demo --model-version 1 \\
        --replicas 2 --port 8501 --records-dir /tmp/srv/requests --samples-dir /tmp/srv/samples
    curl -s localhost:8501/healthz
    curl -s localhost:8501/v1/models/demo
    curl -s localhost:8501/openapi.json
    curl -s -X POST localhost:8501/v1/models/demo:predict -H 'Content-Type: application/json' \\
        -d '{"signature_name": "serving_preprocess",
             "instances": [{"b64": "'"$(base64 -w0 test_images/shapes_320x240.jpg)"'"}]}'

(``python -m caio_operators.targets.local_server`` is the same command.) The predict routes
of AI Platform Prediction, Vertex AI and TF Serving are all served; see ``protocols.py``.

How it works: the supervisor owns the server's one listening socket (127.0.0.1 by default;
port 0 picks a free one) and starts the replicas, each with a private admin socket and a
channel to the supervisor (a Unix socketpair). Each replica loads the model once (TF
intra-op threads = cores // replicas by default, inter-op 1). When every replica answers
``/healthz`` on its admin socket, the supervisor starts accepting: it hands each new
connection's file descriptor to the live replica with the fewest open connections (ties
round-robin) over that replica's channel (SCM_RIGHTS), then closes its own copy; the
replica serves the connection itself, keep-alive included, and reports back when it closes
it. The supervisor is on the connect path only, never on the request path. (Replicas
sharing the port with SO_REUSEPORT would let the kernel hash each connection to a replica:
a few long-lived keep-alive connections, as a load test opens, can then all land on one
replica while another idles. Counting connections spreads them evenly, deterministically.)
Then the supervisor writes the ready file (JSON: pid, port, base_url, replica_pids...) and
samples each replica's CPU% and RSS every second into ``--samples-dir``. SIGTERM/SIGINT,
or ``--max-lifetime-s`` elapsed, stop the replicas (which flush their request records) and
end it with status 0. A replica that dies is logged, not restarted: its connections fail
and new ones go to the others. Replicas stop by themselves when the supervisor dies.
With ``--gpus`` the replicas are pinned to GPUs (one ``CUDA_VISIBLE_DEVICES`` each,
round-robin) and the GPUs they use are sampled through NVML into ``--gpu-samples-dir``
(``metrics/gpu.py``); without a GPU or NVML that says so once and samples nothing.
With ``--batch-max N`` (N > 1) each replica batches the instances of concurrent requests
into one model call (``batching.py``); off by default.

Autoscaling: with ``--max-replicas`` above ``--min-replicas`` (``--replicas`` is then the
starting count), the supervisor feeds each second's CPU samples to ``scaling.py``, which
starts replicas (connections once ready; the others shed their extra keep-alive
connections to it) and drains and stops them (``autoscaler.py`` is the rule). Every change,
and a fixed server's start, is a row in ``--scaling-dir``. An autoscaled server replaces a
replica that dies; a fixed one does not.

This module is the entry point of both roles (a replica is this command with the internal
``--replica-index``). The code: ``server_args.py`` (the options), ``supervisor.py`` and
``balancer.py`` (the supervisor), ``replica.py`` over ``savedmodel.py``, ``handoff.py`` and
``handler.py`` (a replica).
"""

from __future__ import annotations

import logging
import os
import sys

from caio_operators.targets.balancer import pick_replica
from caio_operators.targets.server_args import (
    DEFAULT_BATCH_TIMEOUT_MS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_LIFETIME_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    MODULE,
    ModelDirError,
    build_parser,
    check_args,
    check_model_dir,
    scaling_policy,
    threads_per_replica,
)
from caio_operators.targets.signals import stop_on_signals

# Where the server's names were defined before it was split; importable from here as before.
__all__ = [
    "DEFAULT_BATCH_TIMEOUT_MS", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_LIFETIME_S",
    "DEFAULT_REQUEST_TIMEOUT_S", "MODULE", "ModelDirError", "build_parser", "check_model_dir",
    "main", "pick_replica", "scaling_policy", "threads_per_replica",
]

log = logging.getLogger("caio_operators.targets.local_server")


def _configure_logging(role: str) -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s caio-serve {role} [%(process)d] %(levelname)s %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replica_index is not None:
        from caio_operators.targets import replica

        _configure_logging(f"replica-{args.replica_index}")
        try:
            code = replica.run(args)
        except SystemExit as stop:  # a signal while starting
            code = stop.code if isinstance(stop.code, int) else 0
        except Exception:
            log.exception("replica %d failed", args.replica_index)
            code = 1
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)  # skip interpreter teardown: TF's can hang on its own threads
    check_args(parser, args)
    _configure_logging("supervisor")
    # imported here: a replica process needs none of the supervisor's modules
    from caio_operators.targets.supervisor import Supervisor

    supervisor = Supervisor(args)
    stop_on_signals(supervisor.stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
