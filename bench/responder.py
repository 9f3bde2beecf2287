"""A fast static HTTP/1.1 responder: the fallback target of ``bench/loadgen.py`` when nginx
is not installed.

Every request (any method, any path) gets the same small ``{"predictions": [...]}`` JSON
body, with keep-alive. One asyncio protocol, no framework: the request line and headers
are not parsed beyond what is needed to find where each request ends (``Content-Length``),
so it costs the server as little as possible and the load generator stays the bottleneck.

With ``--stall-period-s P --stall-s S`` it is instead the stalling target of the fidelity
benchmark (``bench/fidelity.py``): a request that completes at phase ``(t - origin) mod P`` below
``S`` is answered when that stall ends, any other after ``--service-ms``. Replies are
scheduled on the event loop (``call_at``), never slept on, so one process holds every
connection a stall piles up; replies on one connection keep their order.

    python bench/responder.py --port 8080      # prints "ready <port>" once listening
    python bench/responder.py --stall-period-s 10 --stall-s 1 --service-ms 1 --origin <epoch>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass

BODY = b'{"predictions": [[0.1, 0.2, 0.7]]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + BODY
)
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Stall:
    """Stall ``stall_s`` seconds at the start of every ``period_s`` from ``origin`` (epoch s);
    ``service_ms`` otherwise."""

    period_s: float
    stall_s: float
    service_ms: float
    origin: float

    def delay_s(self, now: float) -> float:
        """How long a request completing at epoch ``now`` waits for its reply."""
        phase = (now - self.origin) % self.period_s
        return max(0.0, self.stall_s - phase) + self.service_ms / 1000.0


class Responder(asyncio.Protocol):
    """Answers each complete request on a connection with ``RESPONSE`` (pipelining works)."""

    stall: Stall | None = None  # set on a subclass for the stalling responder

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.body_left = 0  # bytes of the current request's body still to skip
        self.reply_at = 0.0  # loop time of this connection's last scheduled reply

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies = 0
        while True:
            if self.body_left:
                skip = min(self.body_left, len(self.buffer))
                del self.buffer[:skip]
                self.body_left -= skip
                if self.body_left:
                    break
                replies += 1
                continue
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self.transport.close()
                break
            head = bytes(self.buffer[:end]).lower()
            del self.buffer[:end + 4]
            self.body_left = _content_length(head)
            if not self.body_left:
                replies += 1
        if replies and self.stall is None:
            self.transport.write(RESPONSE * replies)
        elif replies:
            loop = asyncio.get_running_loop()
            # never before an earlier reply on this connection: responses stay in order
            self.reply_at = max(self.reply_at, loop.time() + self.stall.delay_s(time.time()))
            loop.call_at(self.reply_at, self._reply, replies)

    def _reply(self, replies: int) -> None:
        if not self.transport.is_closing():
            self.transport.write(RESPONSE * replies)


def _content_length(head: bytes) -> int:
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = head.find(b"\r\n", start)
    return int(head[start:end if end >= 0 else None].strip() or 0)


async def serve(host: str, port: int, stall: Stall | None = None) -> None:
    protocol = Responder if stall is None else type("StallingResponder", (Responder,),
                                                     {"stall": stall})
    server = await asyncio.get_running_loop().create_server(
        protocol, host, port, backlog=4096, reuse_address=True)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--stall-period-s", type=float, default=0.0,
                        help="stall at the start of every this many seconds (0: never)")
    parser.add_argument("--stall-s", type=float, default=1.0, help="length of each stall")
    parser.add_argument("--service-ms", type=float, default=1.0,
                        help="reply delay outside a stall (stalling mode only)")
    parser.add_argument("--origin", type=float, default=None,
                        help="epoch seconds where the first stall starts (default: now)")
    args = parser.parse_args(argv)
    stall = None
    if args.stall_period_s:
        if not 0 < args.stall_s < args.stall_period_s or args.service_ms < 0:
            parser.error("need 0 < --stall-s < --stall-period-s and --service-ms >= 0")
        stall = Stall(args.stall_period_s, args.stall_s, args.service_ms,
                      time.time() if args.origin is None else args.origin)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, stall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
