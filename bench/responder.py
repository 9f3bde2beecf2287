"""A fast static HTTP/1.1 responder: the fallback target of ``bench/loadgen.py`` when nginx
is not installed.

Every request (any method, any path) gets the same small ``{"predictions": [...]}`` JSON
body, with keep-alive. One asyncio protocol, no framework: the request line and headers
are not parsed beyond what is needed to find where each request ends (``Content-Length``),
so it costs the server as little as possible and the load generator stays the bottleneck.

    python bench/responder.py --port 8080      # prints "ready <port>" once listening
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

BODY = b'{"predictions": [[0.1, 0.2, 0.7]]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + BODY
)
MAX_HEADER_BYTES = 64 * 1024


class Responder(asyncio.Protocol):
    """Answers each complete request on a connection with ``RESPONSE`` (pipelining works)."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.body_left = 0  # bytes of the current request's body still to skip

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
        if replies:
            self.transport.write(RESPONSE * replies)


def _content_length(head: bytes) -> int:
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = head.find(b"\r\n", start)
    return int(head[start:end if end >= 0 else None].strip() or 0)


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        Responder, host, port, backlog=1024, reuse_address=True)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
