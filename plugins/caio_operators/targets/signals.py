"""Stop a server process cleanly on SIGTERM/SIGINT: shared by the local server's supervisor
and its replicas."""

from __future__ import annotations

import logging
import signal
import socket
import threading

log = logging.getLogger("caio_operators.targets.local_server")

_wakeup: list[socket.socket] = []  # the wakeup socketpair lives as long as the process


def stop_on_signals(stop: threading.Event, announce: bool = True) -> None:
    """Set ``stop`` on SIGTERM or SIGINT (from the main thread only).

    Python runs a signal handler in the main thread between two bytecodes, possibly while
    that thread holds ``stop``'s own lock inside ``stop.wait()``; a handler calling
    ``stop.set()`` can then wait for that lock forever (seen with two SIGTERMs in a row).
    So the handlers do nothing: the signal's number reaches a thread through Python's
    wakeup fd, and that thread sets ``stop``.
    """
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    _wakeup.extend((reader, writer))
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _noted_by_the_wakeup_fd)

    def wait_for_signal() -> None:
        while True:
            number = reader.recv(1)[0]
            if number in (signal.SIGTERM, signal.SIGINT):
                break
        if announce:
            log.info("received %s; stopping", signal.Signals(number).name)
        stop.set()

    threading.Thread(target=wait_for_signal, name="signals", daemon=True).start()


def _noted_by_the_wakeup_fd(signum, frame) -> None:
    pass
