"""A socketmap client for tests and the benchmark, as Postfix's dict_sockmap is: one connection,
one request at a time."""

from __future__ import annotations

import asyncio

from relay.socketmap.netstring import NetstringDecoder, encode


class Client:
    """A socketmap client as Postfix's dict_sockmap is: one connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = NetstringDecoder(100_000)

    async def ask(self, name: str, key: str) -> str:
        self.writer.write(encode(f"{name} {key}".encode()))
        await self.writer.drain()
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("closed")
            replies = self.decoder.feed(data)
            if replies:
                return replies[0].decode()

    async def closed(self) -> bool:
        """True when the server closed the connection (read gives EOF)."""
        return await asyncio.wait_for(self.reader.read(1), 5) == b""


async def connect_to(address: str) -> Client:
    """A client on ``host:port`` or a Unix socket path."""
    if address.startswith("/"):
        return Client(*await asyncio.open_unix_connection(address))
    host, _, port = address.rpartition(":")
    return Client(*await asyncio.open_connection(host.strip("[]"), int(port)))
