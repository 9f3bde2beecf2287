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
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import math
import os
import queue
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from caio_operators import storage
from caio_operators.targets import autoscaler, scaling
from caio_operators.targets.signals import stop_on_signals

log = logging.getLogger("caio_operators.targets.local_server")

MODULE = "caio_operators.targets.local_server"
DEFAULT_MAX_BODY_BYTES = 10 * 2**20
# Once a request has begun, its head and body must arrive within this, however slowly the
# bytes trickle in: a slow client (slowloris) gets a 408 instead of holding a thread.
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_MAX_LIFETIME_S = 6 * 3600
STOP_GRACE_S = 10.0
SAMPLE_INTERVAL_S = 1.0
SAMPLE_FLUSH_INTERVAL_S = 2.0
LISTEN_BACKLOG = 1024
CHANNEL_BUFFER_BYTES = 2**20  # ~2,700 connections in flight per channel (if the kernel allows)
ACCEPT_BURST = 64  # connections accepted in a row before reading the replicas' reports
HANDOFF_WAIT_S = 5.0  # how long a connection waits for a replica whose channel is full
ACCEPT_RETRY_S = 0.5  # pause after an accept error such as EMFILE, instead of spinning
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


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


# Supervisor -------------------------------------------------------------------------------


@dataclass
class Replica:
    index: int
    process: subprocess.Popen
    admin_port: int
    sampler: object = None  # psutil.Process once serving
    exit_logged: bool = False
    retiring: bool = False  # scaled in: its exit is expected


def _health_ok(port: int, timeout: float = 1.0) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        body = response.read()
        return response.status == 200 and json.loads(body).get("status") == "ok"
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, replica end) of a replica's channel.

    SOCK_SEQPACKET keeps messages apart: one message carries one connection (one byte and
    its descriptor) one way, and one "closed" report the other way.
    """
    ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in ends:
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_BUFFER_BYTES)
    return ends


def pick_replica(open_counts: Sequence[int], usable: Sequence[bool], start: int) -> int | None:
    """The replica for a new connection: the usable one with the fewest open connections.

    Ties go to the first one at or after ``start`` (the caller passes the one after its
    last pick: round-robin). None when no replica is usable.
    """
    best = None
    for step in range(len(open_counts)):
        index = (start + step) % len(open_counts)
        if usable[index] and (best is None or open_counts[index] < open_counts[best]):
            best = index
    return best


class ConnectionBalancer:
    """Accepts connections on the server's listening socket and hands them to the replicas.

    One thread, one selector: the listening socket, and each replica's channel for its
    "closed" reports (one byte per connection it closed). A connection goes to the replica
    with the fewest open connections, as its file descriptor (SCM_RIGHTS); the supervisor's
    copy is closed at once. A channel that breaks (end of file, EPIPE: the replica died)
    takes its replica out for good; one that is full (the replica is not picking up) is
    skipped for that connection.
    """

    def __init__(self, listener: socket.socket, stopping: threading.Event | None = None) -> None:
        self.listener = listener
        self.stopping = stopping or threading.Event()  # set: replicas leaving is expected
        self.channels: list[socket.socket | None] = []  # None once the replica is out
        self.open: list[int] = []  # connections each replica holds now
        self.handed: list[int] = []  # connections each replica was given, in all
        self.accepting: list[bool] = []  # False: starting, or draining (scaled in)
        self._added = 0
        self._calls: queue.SimpleQueue = queue.SimpleQueue()  # run by the accept thread
        self._cursor = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()  # ends select() at once
        self._warned_none = False

    def add(self, channel: socket.socket, accepting: bool = True) -> int:
        """Add the next replica's channel (supervisor end); returns its index.

        From one thread (the supervisor's); after ``start()`` the accept thread adds it.
        """
        index = self._added
        self._added += 1

        def add() -> None:
            self.channels.append(channel)
            self.open.append(0)
            self.handed.append(0)
            self.accepting.append(accepting)
            if self._thread is not None:
                channel.setblocking(False)
                self._selector.register(channel, selectors.EVENT_READ, index)

        self._in_loop(add)
        return index

    def set_accepting(self, index: int, accepting: bool) -> None:
        """Place new connections on replica ``index`` or not. Not: it also drains (answers
        every further request with ``Connection: close``). Yes: the replicas holding more
        than their share of the open connections close the extra ones after their next
        answer (keep-alive clients would otherwise never reach a replica that joins later);
        their clients reconnect, and the new connections go to the replica with fewest."""

        def apply() -> None:
            self.accepting[index] = accepting
            if not accepting:
                self._tell(index, scaling.DRAIN_MESSAGE)
                return
            ready = [i for i, c in enumerate(self.channels) if c is not None and self.accepting[i]]
            share = math.ceil(sum(self.open[i] for i in ready) / len(ready))
            for i in ready:
                for _ in range(self.open[i] - share):
                    self._tell(i, scaling.SHED_MESSAGE)

        self._in_loop(apply)

    def _tell(self, index: int, message: bytes) -> None:
        channel = self.channels[index]
        if channel is None:
            return
        try:
            channel.send(message)
        except OSError as exc:  # full or broken: a drain still ends by its timeout
            log.warning("cannot send %r to replica %d: %s", message, index, exc)

    def _in_loop(self, fn) -> None:
        """Run ``fn`` in the accept thread (which owns the lists), or now before it runs."""
        if self._thread is None:
            fn()
            return
        self._calls.put(fn)
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\1")

    def _run_calls(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_reader.recv(4096)
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            fn()

    def start(self) -> None:
        self.listener.setblocking(False)
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._wake_reader.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, -1)
        for index, channel in enumerate(self.channels):
            channel.setblocking(False)
            self._selector.register(channel, selectors.EVENT_READ, index)
        self._thread = threading.Thread(target=self._run, name="accept", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop_accepting(self) -> None:
        """Stop the accept loop and close the listening socket: new connections are refused."""
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"\0")
            self._thread.join(timeout=5)
            self._thread = None
            log.info("connections handed to replicas: %s",
                     ", ".join(f"{i}: {n}" for i, n in enumerate(self.handed)))
        self.listener.close()

    def close(self) -> None:
        """`stop_accepting()`, then close the channels too; idempotent."""
        self.stop_accepting()
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()
        for channel in self.channels:
            if channel is not None:
                channel.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select():
                    if key.data is None:
                        self._accept()
                    elif key.data >= 0:
                        self._read_reports(key.data)
                    else:
                        self._run_calls()
        except Exception:  # the supervise loop sees the thread gone and stops the server
            log.exception("the accept loop failed")

    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue  # the client gave up while it waited in the backlog
            except OSError as exc:  # EMFILE and the like: pause instead of spinning
                log.warning("cannot accept a connection: %s; retrying in %.1f s",
                            exc, ACCEPT_RETRY_S)
                self._stop.wait(ACCEPT_RETRY_S)
                return
            with conn:  # the replica has its own copy once sent
                self._read_all_reports()  # place it on counts that include every close
                self._hand_off(conn)

    def _hand_off(self, conn: socket.socket) -> None:
        full: set[int] = set()
        deadline = None
        while True:
            usable = [c is not None and i not in full and self.accepting[i]
                      for i, c in enumerate(self.channels)]
            index = pick_replica(self.open, usable, self._cursor)
            if index is None:
                if not full or not self._wait_writable(full, deadline):
                    self._give_up(bool(full))
                    return
                full.clear()
                continue
            try:
                socket.send_fds(self.channels[index], [b"\0"], [conn.fileno()])
            except BlockingIOError:
                full.add(index)
                deadline = deadline or time.monotonic() + HANDOFF_WAIT_S
                continue
            except OSError:
                self._drop(index)
                continue
            self.open[index] += 1
            self.handed[index] += 1
            self._cursor = (index + 1) % len(self.channels)
            self._warned_none = False
            return

    def _wait_writable(self, indexes: set[int], deadline: float | None) -> bool:
        """Wait until one of these channels can take a message again, until ``deadline``."""
        deadline = deadline or time.monotonic() + HANDOFF_WAIT_S
        while True:
            channels = [self.channels[i] for i in indexes if self.channels[i] is not None]
            timeout = deadline - time.monotonic()
            if not channels or timeout <= 0 or self._stop.is_set():
                return False
            woken, writable, _ = select.select([self._wake_reader], channels, [], timeout)
            if writable:
                return True
            if woken and not self._stop.is_set():
                self._run_calls()  # a scaling change, not a stop: keep waiting

    def _give_up(self, busy: bool) -> None:
        if not self._warned_none:
            self._warned_none = True
            why = (f"no replica took a connection within {HANDOFF_WAIT_S:.0f} s" if busy
                   else "no replica is left to take connections")
            log.error("%s; closing new connections", why)

    def _read_all_reports(self) -> None:
        for index in range(len(self.channels)):
            self._read_reports(index)

    def _read_reports(self, index: int) -> None:
        channel = self.channels[index]
        if channel is None:
            return
        try:
            while True:
                report = channel.recv(64)
                if not report:  # end of file: the replica is gone
                    self._drop(index)
                    return
                self.open[index] = max(0, self.open[index] - len(report))
        except BlockingIOError:
            return
        except OSError:
            self._drop(index)

    def _drop(self, index: int) -> None:
        channel = self.channels[index]
        if channel is None:
            return
        self._selector.unregister(channel)
        channel.close()
        self.channels[index] = None
        self.open[index] = 0
        expected = self.stopping.is_set() or not self.accepting[index]
        log.log(logging.INFO if expected else logging.WARNING,
                "replica %d takes no more connections (its channel closed)", index)


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.time()
        self.deadline = self.started + args.max_lifetime_s
        self.stop = threading.Event()
        self.replicas: list[Replica] = []
        self.port = 0
        self.samples = None
        self.balancer: ConnectionBalancer | None = None
        self.gpus = None  # metrics.gpu.LocalGpus: pinning and GPU samples
        self.scaling_records = None
        self.scaler: scaling.ScalingController | None = None
        self.intra = threads_per_replica(max(args.replicas, args.max_replicas),
                                         args.threads_per_replica)
        self.model_dir = ""
        self.env: dict[str, str] = {}

    # lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        args = self.args
        if args.ready_file:
            Path(args.ready_file).unlink(missing_ok=True)  # a stale one would lie
        try:
            model_dir = check_model_dir(args.model_dir)
        except ModelDirError as exc:
            log.error("%s", exc)
            return 2
        from caio_operators.metrics.gpu import LocalGpus

        try:
            # GPU samples follow the starting replicas; scaled-out ones are pinned by the same
            # rule but not sampled (docs/gpu.md)
            self.gpus = LocalGpus.open(args.gpus, args.replicas)
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        try:
            listener = _listen(args.host, args.port)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s; pick another --port or --host",
                      args.host, args.port, exc.strerror or exc)
            return 2
        self.balancer = ConnectionBalancer(listener, stopping=self.stop)
        self.port = listener.getsockname()[1]
        try:
            self._spawn(str(model_dir))
            if not self._wait_ready():
                stopped = self.stop.is_set() or time.time() >= self.deadline
                return 0 if stopped else 1
            # Connections that came early wait in the backlog until now.
            self.balancer.start()
            self._write_ready_file()
            return self._supervise()
        finally:
            self.balancer.stop_accepting()
            self._stop_replicas()
            self.balancer.close()  # after the replicas: they take its end of file for a fault
            if self.samples is not None:
                self.samples.close()
            if self.gpus is not None:
                self.gpus.close()
            if self.scaling_records is not None:
                self.scaling_records.close()
            if args.ready_file:
                Path(args.ready_file).unlink(missing_ok=True)
            log.info("stopped")

    def _spawn(self, model_dir: str) -> None:
        """Start the replicas, each with a private admin socket and a channel for connections.

        The supervisor keeps the channels' other ends (in the balancer) and nothing else:
        each replica's admin socket and channel end live in that replica only, so a dead
        replica's channel reads as closed.
        """
        args = self.args
        self.model_dir = model_dir
        self.env = dict(os.environ)
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        for _ in range(args.replicas):
            self._start_replica(accepting=True)
        log.info("started %d replica(s) for %s:%d (pids %s; %d intra-op threads each; %s)",
                 len(self.replicas), args.host, self.port,
                 ", ".join(str(r.process.pid) for r in self.replicas), self.intra,
                 self.gpus.describe())

    def _start_replica(self, accepting: bool) -> int:
        """Start one replica process; its index (the same in the balancer)."""
        args, model_dir, intra = self.args, self.model_dir, self.intra
        ours, theirs = channel_pair()
        index = self.balancer.add(ours, accepting=accepting)
        with theirs, _listen("127.0.0.1", 0) as admin:
            argv = [
                sys.executable, "-m", MODULE, "--replica-index", str(index),
                "--model-dir", model_dir, "--model-name", args.model_name,
                "--model-version", args.model_version,
                "--channel-fd", str(theirs.fileno()), "--admin-fd", str(admin.fileno()),
                "--supervisor-pid", str(os.getpid()),
                "--deadline", repr(self.deadline + 30),
                "--intra-threads", str(intra), "--inter-threads", "1",
                "--records-dir", args.records_dir,
                "--max-body-bytes", str(args.max_body_bytes),
                "--request-timeout-s", repr(args.request_timeout_s),
                "--batch-max", str(args.batch_max),
                "--batch-timeout-ms", repr(args.batch_timeout_ms),
            ]
            if args.import_keras:
                argv.append("--import-keras")
            process = subprocess.Popen(argv, env=self.gpus.env(index, self.env),
                                       stdin=subprocess.DEVNULL,
                                       pass_fds=(theirs.fileno(), admin.fileno()))
            self.replicas.append(Replica(index, process, admin.getsockname()[1]))
        return index

    def _wait_ready(self) -> bool:
        pending = {r.index for r in self.replicas}
        while pending:
            if self.stop.is_set() or self._expired():
                return False
            for replica in self.replicas:
                code = replica.process.poll()
                if code is not None:
                    log.error("replica %d (pid %d) exited with status %d while starting; "
                              "see its messages above", replica.index, replica.process.pid, code)
                    return False
            pending = {i for i in pending if not _health_ok(self.replicas[i].admin_port)}
            if pending:
                self.stop.wait(0.25)
        log.info("all %d replica(s) ready in %.1f s", len(self.replicas),
                 time.time() - self.started)
        return True

    def _expired(self) -> bool:
        if time.time() >= self.deadline:
            log.warning("maximum lifetime of %.0f s reached; stopping", self.args.max_lifetime_s)
            return True
        return False

    def ready_info(self) -> dict:
        host = self.args.host
        url_host = f"[{host}]" if ":" in host else host
        return {
            "pid": os.getpid(),
            "host": host,
            "port": self.port,
            "base_url": f"http://{url_host}:{self.port}",
            "replicas": len(self.replicas),
            "replica_pids": [r.process.pid for r in self.replicas],
            "replica_admin_ports": [r.admin_port for r in self.replicas],
            "model_dir": self.args.model_dir,
            "model_name": self.args.model_name,
            "model_version": self.args.model_version,
            "started_at": self.started,
            "deadline": self.deadline,
        }

    def _write_ready_file(self) -> None:
        if self.args.ready_file:
            storage.write_text(self.args.ready_file, json.dumps(self.ready_info(), indent=2))

    def _supervise(self) -> int:

        from caio_operators.targets.records import SAMPLE_COLUMNS, CsvBatchWriter

        if self.args.samples_dir:
            os.makedirs(self.args.samples_dir, exist_ok=True)
            self.samples = CsvBatchWriter(self.args.samples_dir, "samples", SAMPLE_COLUMNS)
            self.samples.start(SAMPLE_FLUSH_INTERVAL_S)
        self.gpus.start(self.args.gpu_samples_dir, SAMPLE_INTERVAL_S, SAMPLE_FLUSH_INTERVAL_S)
        self._start_scaling(CsvBatchWriter)
        for replica in self.replicas:
            self._start_sampler(replica)
        next_sample = time.monotonic() + SAMPLE_INTERVAL_S
        while not self.stop.wait(max(0.0, next_sample - time.monotonic())):
            next_sample += SAMPLE_INTERVAL_S
            if self._expired():
                return 0
            if not self.balancer.alive():
                log.error("the server no longer accepts connections; stopping")
                return 1
            alive = self._check_replicas()
            if not alive:
                log.error("no replica is left serving; stopping")
                return 1
            cpu = self._sample(alive)
            if self.scaler is not None:
                self.scaler.tick(time.time(), cpu)
        return 0

    @staticmethod
    def _start_sampler(replica: Replica) -> None:
        import psutil

        try:
            replica.sampler = psutil.Process(replica.process.pid)
            replica.sampler.cpu_percent(None)  # the first reading only starts the clock
        except psutil.NoSuchProcess:
            replica.sampler = None

    def _start_scaling(self, writer_class) -> None:
        """The scaling records and, when min < max replicas, the autoscaler."""
        args = self.args
        if args.scaling_dir:
            os.makedirs(args.scaling_dir, exist_ok=True)
        self.scaling_records = writer_class(args.scaling_dir or None, "scaling",
                                            scaling.SCALING_COLUMNS)
        self.scaling_records.start(SAMPLE_FLUSH_INTERVAL_S)
        policy = scaling_policy(args)
        self.scaler = scaling.ScalingController(
            pool=self, recorder=self.scaling_records, policy=policy,
            threads_per_replica=self.intra, drain_timeout_s=args.drain_timeout_s)
        self.scaler.started(time.time(), [r.index for r in self.replicas])
        if policy is not None:
            log.info("autoscaling between %d and %d replicas on %.0f%% CPU (scale out after "
                     "%.0f s above, in after %.0f s below)", policy.min_replicas,
                     policy.max_replicas, policy.target_pct, policy.up_window_s,
                     policy.down_window_s)

    # the scaling controller's port (scaling.Pool) ----------------------------------------

    def start_replica(self) -> int:
        return self._start_replica(accepting=False)

    def replica_healthy(self, index: int) -> bool:
        return _health_ok(self.replicas[index].admin_port, timeout=0.5)

    def replica_exit_code(self, index: int) -> int | None:
        return self.replicas[index].process.poll()

    def open_connections(self, index: int) -> int:
        return self.balancer.open[index]

    def set_accepting(self, index: int, accepting: bool) -> None:
        if accepting:
            self._start_sampler(self.replicas[index])
        self.balancer.set_accepting(index, accepting)

    def terminate_replica(self, index: int) -> None:
        replica = self.replicas[index]
        replica.retiring = True
        if replica.process.poll() is None:
            replica.process.send_signal(signal.SIGTERM)

    def _check_replicas(self) -> list[Replica]:
        alive = []
        for replica in self.replicas:
            code = replica.process.poll()
            if code is None:
                alive.append(replica)
            elif not replica.exit_logged and not replica.retiring:
                replica.exit_logged = True
                log.error("replica %d (pid %d) exited with status %d; %d replica(s) keep "
                          "serving (not restarted)", replica.index, replica.process.pid, code,
                          sum(r.process.poll() is None for r in self.replicas))
        return alive

    def _sample(self, alive: list[Replica]) -> dict[int, float]:
        """Record each ready replica's CPU% and RSS; the CPU% by replica index."""
        import psutil

        now, cpus = time.time(), {}
        for replica in alive:
            if replica.sampler is None:
                continue
            try:
                with replica.sampler.oneshot():
                    cpu = replica.sampler.cpu_percent(None)
                    rss = replica.sampler.memory_info().rss / 2**20
            except psutil.Error:
                continue
            cpus[replica.index] = cpu
            if self.samples is not None:
                self.samples.add((f"{now:.6f}", replica.index, replica.process.pid,
                                  f"{cpu:.1f}", f"{rss:.1f}"))
        return cpus

    def _stop_replicas(self) -> None:
        for replica in self.replicas:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        end = time.monotonic() + STOP_GRACE_S
        for replica in self.replicas:
            try:
                replica.process.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("replica %d (pid %d) ignored SIGTERM; killing it",
                            replica.index, replica.process.pid)
                replica.process.kill()
                replica.process.wait()


# Entry points -----------------------------------------------------------------------------


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
    _check_args(parser, args)
    _configure_logging("supervisor")
    supervisor = Supervisor(args)
    stop_on_signals(supervisor.stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
