"""One replica of the local model server: loads the SavedModel once and serves HTTP.

Started by the supervisor (`supervisor.py`) through `python -m` of `local_server.py`
(never by hand). The supervisor accepts the server's connections and passes each one (its
file descriptor, over an inherited Unix socketpair: the channel) to the replica with the
fewest open connections; the replica serves it directly, keep-alive included, and sends
one byte back on the channel when it closes it, so that the supervisor's counts stay true.
It also accepts connections on a private admin socket that the supervisor probes for
readiness. Every request that is not a
probe is recorded into `<records-dir>/replica-<i>-<seq>.csv`.
It stops on SIGTERM/SIGINT, when the supervisor disappears, or past its deadline,
flushing the records first.

The parts: `savedmodel.py` (the model), `handler.py` (one request), `handoff.py` (the
connections), `batching.py`, `records.py`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import threading
import time

from caio_operators.targets.batching import Batcher
from caio_operators.targets.handler import make_handler
from caio_operators.targets.handoff import HandoffServer, SocketServer
from caio_operators.targets.records import SERVER_RECORD_COLUMNS, CsvBatchWriter
from caio_operators.targets.savedmodel import load_model, skip_keras_import, warm_up
from caio_operators.targets.serving_app import ServingApp
from caio_operators.targets.signals import stop_on_signals

# load_model and skip_keras_import live in savedmodel.py; importable from here as before.
__all__ = ["load_model", "run", "skip_keras_import"]

log = logging.getLogger("caio_operators.targets.replica")

FLUSH_INTERVAL_S = 2.0


def _channel_socket(fd: int) -> socket.socket:
    channel = socket.socket(fileno=fd)
    channel.setblocking(True)  # the receiving thread waits on it; reports are tiny
    return channel


def _listening_socket(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    # Non-blocking accept: a spurious wake-up returns to the loop instead of blocking
    # inside accept() (and shutdown() with it).
    sock.setblocking(False)
    return sock


def _watch_supervisor(supervisor_pid: int, deadline: float, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        if os.getppid() != supervisor_pid:
            log.warning("the supervisor (pid %d) is gone; stopping", supervisor_pid)
        elif time.time() > deadline:
            log.warning("past the server's maximum lifetime; stopping")
        else:
            continue
        os.kill(os.getpid(), signal.SIGTERM)
        return


def run(args: argparse.Namespace) -> int:
    """Serve until told to stop; the exit status for the supervisor's log."""
    index = args.replica_index
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        raise SystemExit(0)  # still starting: nothing to flush yet

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=_watch_supervisor, name="watch-supervisor", daemon=True,
                     args=(args.supervisor_pid, args.deadline, stop)).start()

    started = time.perf_counter()
    try:
        infos, predict, client_errors = load_model(
            args.model_dir, intra_threads=args.intra_threads, inter_threads=args.inter_threads,
            import_keras=args.import_keras)
    except Exception as exc:
        hint = "" if args.import_keras else (
            " (Keras was not imported; if this model needs Keras to load, add --import-keras)")
        log.error("cannot load the SavedModel at %s: %s: %s%s", args.model_dir,
                  type(exc).__name__, str(exc).strip()[:2000], hint)
        return 3
    log.info("loaded %s in %.1f s: signatures %s (intra-op threads %d, inter-op %d)",
             args.model_dir, time.perf_counter() - started, ", ".join(sorted(infos)),
             args.intra_threads, args.inter_threads)
    warm_up(infos, predict)
    # TF leaves ~300k long-lived objects; without this every full collection triggered by
    # parsing a big JSON body walks them all (a 224x224x3 float instance: 115 ms -> 40 ms).
    gc.freeze()

    batcher = None
    if args.batch_max > 1:
        batcher = Batcher(predict, max_instances=args.batch_max,
                          timeout_s=args.batch_timeout_ms / 1000)
        log.info("dynamic batching: up to %d instances per model call, waiting up to %g ms",
                 args.batch_max, args.batch_timeout_ms)
    app = ServingApp(model_name=args.model_name, model_version=args.model_version,
                     signatures=infos, predict=predict, client_errors=client_errors,
                     replica=index, batcher=batcher)
    if args.records_dir:
        os.makedirs(args.records_dir, exist_ok=True)
    recorder = CsvBatchWriter(args.records_dir, f"replica-{index}", SERVER_RECORD_COLUMNS)
    handler = make_handler(app, recorder, args.max_body_bytes, args.request_timeout_s)
    admin = SocketServer(_listening_socket(args.admin_fd), handler)
    handoff = HandoffServer(_channel_socket(args.channel_fd), handler)
    recorder.start(FLUSH_INTERVAL_S)
    threads = [
        threading.Thread(target=admin.serve_forever, kwargs={"poll_interval": 0.2},
                         name="serve-admin", daemon=True),
        threading.Thread(target=handoff.receive_forever, name="receive-connections",
                         daemon=True)]
    for thread in threads:
        thread.start()
    stop_on_signals(stop, announce=False)  # from now on a signal stops the serving cleanly
    log.info("serving (admin port %d)", admin.server_port)

    while not stop.wait(0.5):
        pass
    log.info("stopping")
    handoff.stop()
    admin.shutdown()
    for thread in threads:
        thread.join(timeout=5)
    admin.server_close()
    handoff.server_close()
    handoff.channel.close()
    if batcher is not None:
        batcher.stop()
    recorder.close()
    log.info("records flushed; bye")
    return 0
