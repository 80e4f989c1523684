"""The https endpoint for TLS reports about our own domains (RFC 8460 5.3).

Senders POST ``application/tlsrpt+gzip`` or ``application/tlsrpt+json`` to the URI our
``rua=https://...`` names; any path is taken (the path is the operator's choice). One request per
connection, spoken through h11 (sans-IO HTTP/1.1). Answers: 201 a new report kept, 200 one kept
before (same report-id: the sender may stop retrying), 400 not a report, 403 not about our
domains, 405 not a POST, 408 too slow, 413 too large (before or after gunzip), 415 another
media type, 429 too many from this client (with Retry-After), 503 the store failed (the sender
retries later, RFC 8460 5.5), 500 a bug of ours. Bounded: the headers, the body, the time a
request may take, and the connections open at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable

import h11
import structlog

from relay.inbound.rate import RateLimit
from relay.inbound.taking import ReportKeeper
from tlsrpt_emit.errors import ReceivedStoreError, ReportRefused
from tlsrpt_emit.inbound import MAX_BODY_BYTES, accept_report, unpack_body

log = structlog.get_logger(__name__)

MAX_HEADER_BYTES = 16 * 1024
REQUEST_TIMEOUT = 30.0  # seconds from the connection to the whole request read
MAX_CONNECTIONS = 64


class _Refusal(Exception):
    def __init__(self, status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = tuple(headers)


class ReportEndpoint:
    """Listens on `address` with TLS; each POSTed report is validated and kept."""

    def __init__(
        self,
        address: tuple[str, int],
        ssl_context: ssl.SSLContext,
        keeper: ReportKeeper,
        domains: Iterable[str],
        *,
        clock: Callable[[], float] = time.time,
        rate: RateLimit | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.address = address
        self.ssl_context = ssl_context
        self.keeper = keeper
        self.domains = tuple(domains)
        self.clock = clock
        self.rate = rate or RateLimit()
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._open = 0
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReportEndpoint]:
        host, port = self.address
        self._server = await asyncio.start_server(
            self._connection, host, port, ssl=self.ssl_context, ssl_handshake_timeout=10.0
        )
        log.info("tlsrpt_inbound.listening", listen=f"{host}:{self.port}")
        try:
            yield self
        finally:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
        if self._open >= self.max_connections:
            writer.close()
            return
        self._open += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        try:
            status, text, headers = await self._serve(conn, reader, client)
            await _respond(conn, writer, status, text, headers)
        except (OSError, h11.ProtocolError, ssl.SSLError):
            pass  # the client went away or broke HTTP after our answer began
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(
        self, conn: h11.Connection, reader: asyncio.StreamReader, client: str
    ) -> tuple[int, str, tuple[tuple[str, str], ...]]:
        try:
            async with asyncio.timeout(self.request_timeout):
                request, body = await self._read(conn, reader, client)
            status, text = await self._take(request, body, client)
            return status, text, ()
        except _Refusal as refusal:
            if refusal.status >= 400:
                log.info(
                    "tlsrpt_inbound.refused", client=client, status=refusal.status, why=refusal.text
                )
                self.keeper.count("https", f"refused-{refusal.status}")
            return refusal.status, refusal.text, refusal.headers
        except TimeoutError:
            self.keeper.count("https", "refused-408")
            return 408, "request not received in time", ()
        except h11.RemoteProtocolError as exc:
            return exc.error_status_hint, f"bad request: {exc}", ()
        except Exception as exc:  # a bug of ours: one error line and a 500, never a dropped peer
            log.error("tlsrpt_inbound.internal_error", client=client, error=repr(exc))
            return 500, "internal error", ()

    async def _read(
        self, conn: h11.Connection, reader: asyncio.StreamReader, client: str
    ) -> tuple[h11.Request, bytes]:
        event = await _next_event(conn, reader)
        if not isinstance(event, h11.Request):
            raise _Refusal(400, "no request")
        if event.method != b"POST":
            raise _Refusal(405, "POST a TLS report here (RFC 8460 5.3)", [("allow", "POST")])
        if not self.rate.allow(client, self.clock()):
            wait = str(self.rate.retry_after(client))
            raise _Refusal(429, "too many reports from this address", [("retry-after", wait)])
        length = _header(event, b"content-length")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise _Refusal(413, f"body larger than {MAX_BODY_BYTES} bytes")
        body = bytearray()
        while True:
            part = await _next_event(conn, reader)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_BODY_BYTES:
                    raise _Refusal(413, f"body larger than {MAX_BODY_BYTES} bytes")
            elif isinstance(part, h11.EndOfMessage):
                return event, bytes(body)
            else:
                raise _Refusal(400, "the request ended early")

    async def _take(self, request: h11.Request, body: bytes, client: str) -> tuple[int, str]:
        content_type = _header(request, b"content-type")
        try:
            document = unpack_body(body, content_type)
            received = accept_report(document, self.domains, via="https", now=self.clock())
        except ReportRefused as exc:
            raise _Refusal(exc.status, str(exc)) from None
        try:
            new = await self.keeper.keep_async(received)
        except ReceivedStoreError as exc:
            log.warning("tlsrpt_inbound.store_failed", client=client, error=str(exc))
            raise _Refusal(503, "cannot keep the report now; try again later") from None
        report_id = received.report.report_id
        return (201, f"kept {report_id}") if new else (200, f"already kept {report_id}")


def _header(request: h11.Request, name: bytes) -> str:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1").strip()
    return ""


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(64 * 1024))


async def _respond(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    text: str,
    headers: Iterable[tuple[str, str]],
) -> None:
    body = (text + "\n").encode("utf-8", "replace")
    fields = [
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
        ("connection", "close"),
        *headers,
    ]
    writer.write(conn.send(h11.Response(status_code=status, headers=fields)))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
