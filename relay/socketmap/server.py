"""The socketmap server: netstring requests in, replies out, on TCP or a Unix socket.

Connections are persistent and carry any number of requests, answered in order. Bounded: at
most `max_connections` at once (more are closed at once), an idle connection is closed after
`idle_timeout`, a query over Postfix's 10,000 bytes or a malformed netstring closes the
connection with one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat

import structlog

from relay.config import parse_hostport
from relay.socketmap.errors import SocketmapProtocolError
from relay.socketmap.netstring import MAX_QUERY, NetstringDecoder, encode
from relay.socketmap.protocol import parse_request
from relay.socketmap.service import SocketmapService

log = structlog.get_logger(__name__)

MAX_CONNECTIONS = 1000
IDLE_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0  # seconds a stop waits for queries being answered


def is_unix_path(listen: str) -> bool:
    """`[socketmap].listen` names a Unix socket when it is a path (it has a ``/``)."""
    return "/" in listen


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
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        """Where it listens: the socket path, or ``host:port`` (the real port when 0 was asked)."""
        if self._server is None or is_unix_path(self.listen):
            return self.listen
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self) -> None:
        if is_unix_path(self.listen):
            await asyncio.to_thread(_clear_stale_socket, self.listen)
            self._server = await asyncio.start_unix_server(self._serve, path=self.listen)
            os.chmod(self.listen, 0o666)  # Postfix's smtp processes run as another user
        else:
            if self.listen.endswith(":0"):  # any free port (tests, benchmarks)
                host, port = parse_hostport(self.listen[:-2], "[socketmap].listen", 0)
            else:
                host, port = parse_hostport(self.listen, "[socketmap].listen")
            self._server = await asyncio.start_server(self._serve, host, port)
        log.info("socketmap.listening", listen=self.address)

    async def stop(self) -> None:
        """Stop listening and close every connection (a query being answered is finished)."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()  # the handler reads end-of-file and returns
        if self._handlers:
            _, late = await asyncio.wait(set(self._handlers), timeout=STOP_TIMEOUT)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        if is_unix_path(self.listen):
            with contextlib.suppress(OSError):
                os.unlink(self.listen)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            if self.connections > self.max_connections:
                log.warning("socketmap.too_many_connections", limit=self.max_connections)
                return
            await self._converse(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away, or was idle too long
        except SocketmapProtocolError as exc:
            log.warning("socketmap.protocol_error", peer=_peer(writer), error=str(exc))
        finally:
            self.connections -= 1
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = NetstringDecoder(MAX_QUERY)
        while True:
            async with asyncio.timeout(self.idle_timeout):
                data = await reader.read(16384)
            if not data:
                return
            for payload in decoder.feed(data):
                reply = await self.service.reply(parse_request(payload))
                writer.write(encode(reply.encode()))
            await writer.drain()


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a process that did not stop cleanly (never another file)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer) if peer else "unix"
