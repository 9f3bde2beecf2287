"""One replica of the local model server: loads the SavedModel once and serves HTTP.

Started by the supervisor in `local_server.py` (never by hand). The supervisor accepts the
server's connections and passes each one (its file descriptor, over an inherited Unix
socketpair: the channel) to the replica with the fewest open connections; the replica
serves it directly, keep-alive included, and sends one byte back on the channel when it
closes it, so that the supervisor's counts stay true. It also accepts connections on a
private admin socket that the supervisor probes for readiness. Every request that is not a
probe is recorded into `<records-dir>/replica-<i>-<seq>.csv`.
It stops on SIGTERM/SIGINT, when the supervisor disappears, or past its deadline,
flushing the records first.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.machinery
import io
import logging
import os
import signal
import socket
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from caio_operators.targets.batching import Batcher
from caio_operators.targets.instances import STRING, SignatureInfo, TensorInfo
from caio_operators.targets.records import SERVER_RECORD_COLUMNS, CsvBatchWriter
from caio_operators.targets.scaling import DRAIN_MESSAGE, SHED_MESSAGE
from caio_operators.targets.serving_app import Reply, ServingApp, error_reply, reason
from caio_operators.targets.signals import stop_on_signals

log = logging.getLogger("caio_operators.targets.replica")

IDLE_TIMEOUT_S = 120  # an idle keep-alive connection is closed after this
DRAIN_LIMIT = 64 * 2**20  # read and drop an oversized body up to this size to answer it cleanly
# Lingering close (as nginx's lingering_close): after its last answer the server stops
# sending and reads what the client still sends, for at most LINGER_S in all and
# LINGER_READ_S per silence, before it closes. Closing with unread bytes would reset the
# connection, and a client still sending (a slow one answered 408, a body refused with
# 413) could lose the answer it was sent.
LINGER_S = 5.0
LINGER_READ_S = 2.0
FLUSH_INTERVAL_S = 2.0
ERROR_TEXT_LIMIT = 200
# Received descriptors are close-on-exec like any socket Python opens.
RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


# Model ------------------------------------------------------------------------------------


def skip_keras_import() -> None:
    """Make `import tensorflow` skip its eager import of Keras.

    Serving a SavedModel needs no Keras, but TensorFlow imports it (with scikit-learn,
    pandas, SciPy...) on import, which doubles a replica's start-up. A placeholder module
    with Keras' real spec keeps TensorFlow's path lookups working while its optional
    `import keras.src.optimizers` fails and is skipped.
    """
    if "keras" in sys.modules:
        return
    spec = importlib.machinery.PathFinder.find_spec("keras")
    if spec is None:
        return
    placeholder = types.ModuleType("keras")
    placeholder.__spec__ = spec
    sys.modules["keras"] = placeholder


def _tensor_info(tf, name: str, spec) -> TensorInfo:
    dtype = STRING if spec.dtype == tf.string else spec.dtype.name
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return TensorInfo(name=name, dtype=dtype, shape=shape)


def load_model(model_dir: str, *, intra_threads: int, inter_threads: int, import_keras: bool):
    """(signature infos, predict callable, client error types) for a SavedModel."""
    if not import_keras:
        skip_keras_import()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra_threads)
    tf.config.threading.set_inter_op_parallelism_threads(inter_threads)
    loaded = tf.saved_model.load(model_dir)
    functions = dict(loaded.signatures)
    if not functions:
        raise RuntimeError(f"the SavedModel at {model_dir} has no serving signatures")
    infos = {}
    for name, function in functions.items():
        _, kwargs = function.structured_input_signature
        outputs = function.structured_outputs
        infos[name] = SignatureInfo(
            name=name,
            inputs=tuple(_tensor_info(tf, k, s) for k, s in sorted(kwargs.items())),
            outputs=tuple(_tensor_info(tf, k, s) for k, s in sorted(outputs.items())))

    def predict(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # `loaded` stays referenced here: its variables die with it.
        result = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    return infos, predict, (tf.errors.InvalidArgumentError,)


def warm_up(infos: dict[str, SignatureInfo], predict) -> None:
    """Run each signature once so that the first real request is not the slow one."""
    import tensorflow as tf

    image = tf.io.encode_png(tf.zeros([32, 32, 3], tf.uint8)).numpy()
    for name, info in sorted(infos.items()):
        inputs = {}
        for t in info.inputs:
            if t.dtype == STRING:
                inputs[t.name] = np.array([image], dtype=object)
            elif t.shape is not None:
                inputs[t.name] = np.zeros([d or 1 for d in t.shape], dtype=t.dtype)
        if len(inputs) != len(info.inputs):
            continue
        started = time.perf_counter()
        try:
            predict(name, inputs)
        except Exception as exc:  # a warm-up input the model dislikes is not fatal
            log.info("warm-up of %s skipped: %s", name, str(exc).splitlines()[0][:200])
            continue
        log.info("warm-up of %s took %.0f ms", name, (time.perf_counter() - started) * 1000)


# HTTP -------------------------------------------------------------------------------------


def lingering_close(sock: socket.socket) -> None:
    """Half-close ``sock`` and drain its input (see LINGER_S); the caller then closes it."""
    with contextlib.suppress(OSError):  # a reset or a timeout: nothing more to wait for
        sock.shutdown(socket.SHUT_WR)
        end = time.monotonic() + LINGER_S
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(min(left, LINGER_READ_S))
            if not sock.recv(65536):
                return  # the client closed too: the answer was read or is in its buffer


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def shutdown_request(self, request) -> None:
        lingering_close(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # the client went away; nothing to answer
        log.exception("unexpected error with client %s", client_address)


class SocketServer(_Server):
    """A threading HTTP server on an already listening socket."""

    def __init__(self, sock: socket.socket, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(sock.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_name, self.server_port = sock.getsockname()[:2]


class HandoffServer(_Server):
    """A threading HTTP server for the connections that the supervisor hands over.

    It listens on nothing: `receive_forever()` takes each connection's descriptor off the
    channel and serves it like an accepted one (a thread per connection); closing it sends
    a "closed" report back. `stop()` ends `receive_forever()` from another thread.
    """

    def __init__(self, channel: socket.socket, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("", 0), handler, bind_and_activate=False)
        self.socket.close()  # the supervisor listens; this server only serves
        self.channel = channel
        self._stopping = False
        self.draining = False  # the supervisor scales in: close connections after answering
        self._shed = 0  # connections to close after their next answer (a replica joined)
        self._shed_lock = threading.Lock()
        self._idle: set[socket.socket] = set()  # keep-alive connections between requests

    def waiting(self, conn: socket.socket, idle: bool) -> None:
        """A handler is waiting for its connection's next request (or no longer). Once
        draining, it waits no more: a request already received is still read and answered
        (on Linux a read shut down returns what arrived, then end of file)."""
        with self._shed_lock:
            if not idle:
                self._idle.discard(conn)
                return
            if not self.draining:
                self._idle.add(conn)
                return
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RD)

    def drain(self) -> None:
        """Close every connection after its answer, and the idle ones now: as a server
        closing idle keep-alive connections does, a FIN its client sees before reusing one
        (the pending read returns end of file; ``lingering_close`` does the rest)."""
        with self._shed_lock:
            self.draining = True
            idle = list(self._idle)
        log.info("draining: every further answer closes its connection; closing %d idle "
                 "one(s)", len(idle))
        for conn in idle:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)

    def close_after_answer(self) -> bool:
        """Whether the connection answering now should close (draining, or shedding)."""
        if self.draining:
            return True
        with self._shed_lock:
            if self._shed > 0:
                self._shed -= 1
                return True
        return False

    def receive_forever(self) -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self.channel, 1, 1, RECV_FLAGS)
            except OSError as exc:
                if not self._stopping:
                    log.error("cannot receive connections from the supervisor: %s", exc)
                return
            if not message and not fds:  # end of file: the supervisor closed it, or stop()
                if not self._stopping:
                    log.warning("the supervisor closed the connection channel")
                return
            if message == DRAIN_MESSAGE and not fds:
                self.drain()
                continue
            if message == SHED_MESSAGE and not fds:
                with self._shed_lock:
                    self._shed += 1
                continue
            for fd in fds:
                self._serve(fd)

    def _serve(self, fd: int) -> None:
        try:
            conn = socket.socket(fileno=fd)
        except OSError:  # not a socket: cannot happen, but never leak the descriptor
            os.close(fd)
            self._report_closed()
            return
        try:
            address = conn.getpeername()
        except OSError:  # the client already left; the handler sees the end of file
            address = ("", 0)
        try:
            self.process_request(conn, address)
        except Exception:  # no thread for it (out of memory, say): drop this connection
            self.handle_error(conn, address)
            self.shutdown_request(conn)

    def shutdown_request(self, request) -> None:
        # Reported first: the connection serves nothing more while it lingers, and once its
        # descriptor is gone the supervisor's count is already right.
        self._report_closed()
        super().shutdown_request(request)

    def _report_closed(self) -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone: no one counts any more
            self.channel.send(b"\0")

    def stop(self) -> None:
        """Make `receive_forever()` return (connections being served carry on)."""
        self._stopping = True
        with contextlib.suppress(OSError):  # the supervisor closed it first
            self.channel.shutdown(socket.SHUT_RDWR)


class DeadlineReader(socket.SocketIO):
    """A connection's raw reader with a deadline: while ``deadline`` is set, every read
    waits only for the time left before it, so a request trickling in a byte at a time
    still ends there (``timed_out``)."""

    deadline: float | None = None
    timed_out = False

    def readinto(self, buffer) -> int | None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.timed_out = True
                raise TimeoutError("the request did not arrive in time")
            self._sock.settimeout(left)
        try:
            return super().readinto(buffer)
        except TimeoutError:
            self.timed_out = self.deadline is not None
            raise


def make_handler(app: ServingApp, recorder: CsvBatchWriter, max_body_bytes: int,
                 request_timeout_s: float):
    """The request handler class of one replica; ``request_timeout_s``: a request's head
    and body must arrive within it from its first byte (slow clients get 408)."""
    replica = app.replica

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "caio-serve"
        disable_nagle_algorithm = True  # headers and body go out in one write anyway
        timeout = IDLE_TIMEOUT_S

        def log_message(self, format, *args) -> None:
            pass  # per-request logging would cost more than the request

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # replaced by one whose reads keep the request's deadline
            self.connection._io_refs += 1  # what socket.makefile does for its readers
            self.raw_reader = DeadlineReader(self.connection, "rb")
            self.rfile = io.BufferedReader(self.raw_reader)

        def _idle(self) -> None:
            self.raw_reader.deadline = None
            self.connection.settimeout(IDLE_TIMEOUT_S)

        def handle_one_request(self) -> None:
            # Waiting for the next request on a keep-alive connection is idle time; the
            # request's own deadline starts with its first byte.
            self._idle()
            waiting = getattr(self.server, "waiting", None)  # the handoff server's
            if waiting is not None:
                waiting(self.connection, True)
            try:
                if not self.rfile.peek(1):
                    self.close_connection = True
                    return
            except (TimeoutError, OSError):
                self.close_connection = True
                return
            finally:
                if waiting is not None:
                    waiting(self.connection, False)
            ts, t0 = time.time(), time.perf_counter()
            self.raw_reader.deadline = time.monotonic() + request_timeout_s
            super().handle_one_request()
            if self.raw_reader.timed_out:
                self.raw_reader.timed_out = False
                self.connection.settimeout(IDLE_TIMEOUT_S)  # for the answer
                self._reject(408, f"the request did not arrive within {request_timeout_s:g} "
                             "s of its first byte", True, ts, t0)

        def _record(self, reply: Reply, ts: float, latency_s: float) -> None:
            if reply.record:
                error = " ".join(reply.error.split())[:ERROR_TEXT_LIMIT]
                timed = reply.ok
                recorder.add((f"{ts:.6f}", f"{latency_s * 1000:.3f}", int(reply.ok),
                              reply.status, reply.signature, replica, reply.instances, error,
                              f"{reply.model_ms:.3f}" if timed else "",
                              f"{reply.queue_ms:.3f}" if timed else ""))

        def _write(self, reply: Reply, close: bool = False) -> None:
            if close or self.close_connection or getattr(
                    self.server, "close_after_answer", bool)():
                self.close_connection = True
            lines = [f"HTTP/1.1 {reply.status} {reason(reply.status)}",
                     "Content-Type: application/json",
                     f"Content-Length: {len(reply.body)}",
                     f"X-Caio-Replica: {replica}",
                     "Connection: close" if self.close_connection else "Connection: keep-alive"]
            if reply.allow:
                lines.append(f"Allow: {reply.allow}")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            body = b"" if getattr(self, "command", None) == "HEAD" else reply.body
            try:
                self.wfile.write(head + body)
            except (ConnectionError, TimeoutError):
                self.close_connection = True

        def _reject(self, status: int, message: str, close: bool, ts: float, t0: float) -> None:
            reply = error_reply(status, message, path=getattr(self, "path", ""))
            self._record(reply, ts, time.perf_counter() - t0)
            self._write(reply, close=close)

        def send_error(self, code, message=None, explain=None) -> None:
            # Malformed request lines, oversized headers, unknown methods: JSON, then close.
            text = f"{code} {reason(code)}: {message or explain or 'malformed request'}"
            self._reject(code, text, True, time.time(), time.perf_counter())

        def handle_expect_100(self) -> bool:
            length = _content_length(self.headers.get("Content-Length", ""))
            if length is not None and length > max_body_bytes:
                self._reject(413, _too_large(length, max_body_bytes), True,
                             time.time(), time.perf_counter())
                return False
            return super().handle_expect_100()

        def _read_body(self, ts: float, t0: float) -> bytes | None:
            if self.headers.get("Transfer-Encoding"):
                self._reject(411, "chunked bodies are not supported; send a Content-Length",
                             True, ts, t0)
                return None
            length_text = self.headers.get("Content-Length")
            if length_text is None:
                if self.command == "POST":
                    self._reject(411, "a POST needs a Content-Length header", True, ts, t0)
                    return None
                return b""
            length = _content_length(length_text)
            if length is None:
                self._reject(400, f"bad Content-Length {length_text[:40]!r}", True, ts, t0)
                return None
            if length > max_body_bytes:
                fits = length <= DRAIN_LIMIT and self._drain(length)
                self._reject(413, _too_large(length, max_body_bytes), not fits, ts, t0)
                return None
            try:
                body = self.rfile.read(length)
            except (ConnectionError, TimeoutError, OSError):
                body = b""
            if len(body) < length:  # the client hung up mid-body: no one to answer
                self.close_connection = True
                return None
            return body

        def _drain(self, length: int) -> bool:
            try:
                while length > 0:
                    chunk = self.rfile.read(min(length, 2**20))
                    if not chunk:
                        return False
                    length -= len(chunk)
            except (ConnectionError, TimeoutError, OSError):
                return False
            return True

        def _serve(self) -> None:
            ts, t0 = time.time(), time.perf_counter()
            body = self._read_body(ts, t0)
            if body is None:
                return
            self._idle()  # the request is in: answering it is not bound by its deadline
            # Server-side latency: from the request fully read to the response ready.
            ts, t0 = time.time(), time.perf_counter()
            try:
                reply = app.handle(self.command, self.path, body)
            except Exception as exc:
                log.exception("unhandled error for %s %s", self.command, self.path[:200])
                reply = error_reply(500, f"internal error: {type(exc).__name__}")
            self._record(reply, ts, time.perf_counter() - t0)
            self._write(reply)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    return Handler


def _content_length(text: str) -> int | None:
    """The value of a Content-Length header, None unless it is plain ASCII digits."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _too_large(length: int, limit: int) -> str:
    return (f"request body is {length} bytes, over the limit of {limit} bytes; send fewer "
            "instances per request or raise --max-body-bytes")


# Process ----------------------------------------------------------------------------------


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
