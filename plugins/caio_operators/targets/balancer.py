"""The local server's connection balancer: the supervisor's accept loop.

The supervisor (``supervisor.py``) owns the server's one listening socket; this hands each
new connection to the replica with the fewest open connections, over that replica's
channel (a Unix socketpair, SCM_RIGHTS), and counts the "closed" reports coming back. It
also carries the autoscaler's drain and shed messages (``scaling.py``) to the replicas.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import select
import selectors
import socket
import threading
import time
from collections.abc import Sequence

from caio_operators.targets import scaling

log = logging.getLogger("caio_operators.targets.local_server")

CHANNEL_BUFFER_BYTES = 2**20  # ~2,700 connections in flight per channel (if the kernel allows)
ACCEPT_BURST = 64  # connections accepted in a row before reading the replicas' reports
HANDOFF_WAIT_S = 5.0  # how long a connection waits for a replica whose channel is full
ACCEPT_RETRY_S = 0.5  # pause after an accept error such as EMFILE, instead of spinning


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
            if channel is None:  # out before the start
                continue
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
            channel = self.channels[index]
            assert channel is not None  # pick_replica picks usable replicas only
            try:
                socket.send_fds(channel, [b"\0"], [conn.fileno()])
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
            channels = [c for i in indexes if (c := self.channels[i]) is not None]
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
