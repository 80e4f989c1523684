"""A TLS-RPT report collector on loopback: HTTPS, a tiny HTTP/1.1 server, records every POST.

    collector = ReportCollector(cert.server_context(), statuses=[500, 201])
    async with collector.running():
        url = collector.url("/tlsrpt")     # https://127.0.0.1:PORT/tlsrpt
        ...
    collector.received[0].body             # the gzipped report

It answers the statuses in order (the last one repeats; 200 when none are given).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
MAX_BODY = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CollectedRequest:
    """One request as received: method, path, headers (lower-case names), body, our answer."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def report(self) -> Any:
        """The body as JSON, un-gzipped when it is gzip."""
        data = gzip.decompress(self.body) if self.body[:2] == b"\x1f\x8b" else self.body
        return json.loads(data)


class ReportCollector:
    """An HTTPS (or, without a context, plain HTTP) server that stores what is POSTed to it."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None,
        *,
        host: str = "127.0.0.1",
        statuses: Iterable[int] = (),
        host_name: str | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.host = host
        self.host_name = host_name or host
        self.statuses = list(statuses)
        self.received: list[CollectedRequest] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    def url(self, path: str = "/") -> str:
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host_name}]" if ":" in self.host_name else self.host_name
        return f"{scheme}://{host}:{self.port}{path}"

    def _next_status(self) -> int:
        if not self.statuses:
            return 200
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, port, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @contextlib.asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[ReportCollector]:
        await self.start(port)
        try:
            yield self
        finally:
            await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
            pass
        finally:
            writer.close()  # not awaited: stopping the server must not hang on a TLS close

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, path, _version = line.decode("latin-1").strip().split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked(reader)
        else:
            length = int(headers.get("content-length", "0"))
            if length > MAX_BODY:
                raise ValueError("body too large")
            body = await reader.readexactly(length)
        status = self._next_status() if method == "POST" else 405
        self.received.append(CollectedRequest(method, path, headers, body, status))
        reason = _REASONS.get(status, "Status")
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n".encode("latin-1"))
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return body
            body += await reader.readexactly(size)
            await reader.readline()
            if len(body) > MAX_BODY:
                raise ValueError("body too large")
