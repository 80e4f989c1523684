"""The socketmap server: netstring requests in, replies out, on TCP or a Unix socket.

Connections are persistent and carry any number of requests, answered in order. A request
answered recently is replied to inside `data_received` (`SocketmapService.reply_now`); any other
goes to the connection's one worker task, and requests behind it wait their turn. Bounded: at
most `max_connections` at once (more are closed at once), an idle connection is closed after
`idle_timeout`, a query over Postfix's 10,000 bytes or a malformed netstring closes the
connection with one log line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import stat
from typing import cast

import structlog

from relay.config_values import parse_hostport
from relay.socketmap.errors import SocketmapProtocolError
from relay.socketmap.netstring import MAX_QUERY, NetstringDecoder, encode
from relay.socketmap.service import SocketmapService

log = structlog.get_logger(__name__)

MAX_CONNECTIONS = 1000
IDLE_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0  # seconds a stop waits for queries being answered
MAX_WAITING = 64  # requests queued on one connection before it is read no further


def is_unix_path(listen: str) -> bool:
    """`[socketmap].listen` names a Unix socket when it is a path (it has a ``/``)."""
    return "/" in listen


class _Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: SocketmapServer) -> None:
        self.server = server
        self.decoder = NetstringDecoder(MAX_QUERY)
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[bytes] = collections.deque()
        self.worker: asyncio.Task[None] | None = None
        self.reads = 0  # data_received calls, for the idle check
        self.idle_check: asyncio.TimerHandle | None = None
        self.reads_at_check = -1
        self.paused = False  # reading stopped: replies not taken, or too many requests queued
        self.writing_paused = False  # the transport's buffer is over its high-water mark

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if len(self.server.connections) >= self.server.max_connections:
            log.warning("socketmap.too_many_connections", limit=self.server.max_connections)
            self.transport.close()
            return
        self.server.connections.add(self)
        self._arm_idle_check()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.idle_check is not None:
            self.idle_check.cancel()
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        assert self.transport is not None
        if not self.waiting and not self.decoder.pending:
            # Postfix's usual read: one whole request, answered recently (its netstring is the
            # memo's key), replied to without decoding it.
            framed = self.server.service.reply_now(data)
            if framed is not None:
                self.transport.write(framed)
                return
        try:
            payloads = self.decoder.feed(data)
        except SocketmapProtocolError as exc:
            self.fail(exc)
            return
        for payload in payloads:
            if not self.waiting and not self.decoder.pending:
                framed = self.server.service.reply_now(encode(payload))
                if framed is not None:
                    self.transport.write(framed)
                    continue
            self.waiting.append(payload)
        if self.waiting and self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())
        if len(self.waiting) > MAX_WAITING:
            self._pause()

    def pause_writing(self) -> None:
        """The client does not read its replies: read no more requests until it does."""
        self.writing_paused = True
        self._pause()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if len(self.waiting) <= MAX_WAITING:
            self._resume()

    def _pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    def fail(self, exc: SocketmapProtocolError) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        log.warning("socketmap.protocol_error", peer=str(peer) if peer else "unix", error=str(exc))
        self.waiting.clear()
        if self.transport is not None:
            self.transport.close()

    async def _work(self) -> None:
        """Answer the waiting requests in order (those that need a look-up, and those behind)."""
        try:
            while self.waiting and self.transport is not None and not self.transport.is_closing():
                payload = self.waiting[0]
                framed = self.server.service.reply_now(encode(payload))
                if framed is None:
                    framed = await self.server.service.reply(payload)
                self.waiting.popleft()
                self.transport.write(framed)
                self.reads += 1
                if (
                    len(self.waiting) < MAX_WAITING // 2
                    and self.transport.get_write_buffer_size() == 0
                ):
                    self._resume()
        finally:
            self.worker = None

    def _arm_idle_check(self) -> None:
        """Close the connection when nothing was read or answered since the last check (every
        `idle_timeout`; an idle connection lives between one and two of them)."""
        if self.reads == self.reads_at_check and self.worker is None:
            assert self.transport is not None
            self.transport.close()
            return
        self.reads_at_check = self.reads
        self.idle_check = asyncio.get_running_loop().call_later(
            self.server.idle_timeout, self._arm_idle_check
        )


class SocketmapServer:
    """Serves `service` on `listen` (``host:port`` or a Unix socket path)."""

    def __init__(
        self,
        listen: str,
        service: SocketmapService,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.listen = listen
        self.service = service
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        """Where it listens: the socket path, or ``host:port`` (the real port when 0 was asked)."""
        if self._server is None or is_unix_path(self.listen):
            return self.listen
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if is_unix_path(self.listen):
            await asyncio.to_thread(_clear_stale_socket, self.listen)
            self._server = await loop.create_unix_server(
                lambda: _Connection(self), path=self.listen
            )
            os.chmod(self.listen, 0o666)  # Postfix's smtp processes run as another user
        else:
            if self.listen.endswith(":0"):  # any free port (tests, benchmarks)
                host, port = parse_hostport(self.listen[:-2], "[socketmap].listen", 0)
            else:
                host, port = parse_hostport(self.listen, "[socketmap].listen")
            self._server = await loop.create_server(lambda: _Connection(self), host, port)
        log.info("socketmap.listening", listen=self.address)

    async def stop(self) -> None:
        """Stop listening and close every connection (a query being answered is finished)."""
        if self._server is None:
            return
        self._server.close()
        workers = [c.worker for c in self.connections if c.worker is not None]
        if workers:
            await asyncio.wait(workers, timeout=STOP_TIMEOUT)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        await asyncio.sleep(0)  # let connection_lost run
        await self._server.wait_closed()
        self._server = None
        if is_unix_path(self.listen):
            with contextlib.suppress(OSError):
                os.unlink(self.listen)


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a process that did not stop cleanly (never another file)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
