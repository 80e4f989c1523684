"""The floor for a socketmap server in Python: every read answered with one fixed reply.

    python bench/socketmap_floor.py ADDRESS     (host:port or a Unix socket path)

No parsing, no look-up, no metrics: uvloop, one `data_received` and one `transport.write` per
request. Its queries per CPU second, measured like the real servers', are the most any server
on this event loop can reach with the benchmark's client and Postfix's one-request-at-a-time
pattern: the rest is the event loop and the kernel (`epoll_wait`, `read`, `write`).
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

REPLY = b"51:OK secure match=sink.bench.test servername=hostname,"


class _Fixed(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(REPLY)  # type: ignore[attr-defined]


async def serve(address: str) -> None:
    loop = asyncio.get_running_loop()
    if address.startswith("/"):
        server = await loop.create_unix_server(_Fixed, path=address)
    else:
        host, _, port = address.rpartition(":")
        server = await loop.create_server(_Fixed, host, int(port))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1]))
