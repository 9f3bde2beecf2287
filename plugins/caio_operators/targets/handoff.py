"""A replica's HTTP servers: the admin socket's, and the one for handed-over connections.

The supervisor passes each connection's descriptor over the replica's channel;
``HandoffServer`` serves it like an accepted one and reports back when it closes it. Both
servers close connections lingering (``lingering_close``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from caio_operators.targets.scaling import DRAIN_MESSAGE, SHED_MESSAGE

log = logging.getLogger("caio_operators.targets.replica")

# Lingering close (as nginx's lingering_close): after its last answer the server stops
# sending and reads what the client still sends, for at most LINGER_S in all and
# LINGER_READ_S per silence, before it closes. Closing with unread bytes would reset the
# connection, and a client still sending (a slow one answered 408, a body refused with
# 413) could lose the answer it was sent.
LINGER_S = 5.0
LINGER_READ_S = 2.0
# Received descriptors are close-on-exec like any socket Python opens.
RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


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
