"""A scripted SMTP server with STARTTLS on loopback that records what arrived in which read.

`PipeMx` answers the commands of each read in order: all replies of a read in one write, or
after TLS each reply in its own write with one turn of the event loop between them
(`split="replies"`), or one byte per write a millisecond apart (`split="bytes"`). It offers
PIPELINING (unless told not to) and answers MAIL, each RCPT and DATA as scripted; `drop_at`
names the command at which it aborts the connection instead of answering (the replies before it
in that read are still sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

OK = b"250 2.1.5 ok"


@dataclass
class PipeMx:
    host: str
    name: str
    tls: ssl.SSLContext
    pipelining: bool = True
    split: str = ""  # "" | "replies" | "bytes"
    mail_reply: bytes = b"250 2.1.0 ok"
    rcpt_replies: dict[str, bytes] = field(default_factory=dict)  # address -> reply, else OK
    data_reply: bytes | None = None  # None: 354 if a RCPT was accepted, else 554
    drop_at: bytes = b""  # e.g. b"RCPT": abort instead of answering the first RCPT
    port: int = 0
    reads: list[bytes] = field(default_factory=list)  # each read after the TLS handshake
    commands: list[bytes] = field(default_factory=list)  # each command line, in order
    messages: list[bytes] = field(default_factory=list)  # each body ended with a dot
    connections: int = 0

    @contextlib.asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[PipeMx]:
        server = await asyncio.start_server(self._session, self.host, port)
        self.port = int(server.sockets[0].getsockname()[1])
        try:
            yield self
        finally:
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        session = _Session(self, writer)
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            writer.write(b"220 " + self.name.encode() + b" ESMTP\r\n")
            while chunk := await reader.read(65536):
                if session.encrypted:
                    self.reads.append(chunk)
                if not await session.received(chunk):
                    break
        writer.close()


class _Session:
    """One connection's state: TLS, the transaction, a body being received."""

    def __init__(self, mx: PipeMx, writer: asyncio.StreamWriter) -> None:
        self.mx = mx
        self.writer = writer
        self.buffer = bytearray()
        self.encrypted = False
        self.mail = False
        self.accepted = 0
        self.body: bytearray | None = None

    async def received(self, chunk: bytes) -> bool:
        """Answer every complete line of the buffer; False when the connection is to end."""
        self.buffer += chunk
        out: list[bytes] = []
        while (end := self.buffer.find(b"\r\n")) != -1:
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 2]
            if self.body is not None:
                self._body_line(line, out)
                continue
            self.mx.commands.append(line)
            verb = line.split(b" ")[0].split(b":")[0].upper()
            if verb == self.mx.drop_at:
                await self._send(out)
                assert isinstance(self.writer.transport, asyncio.Transport)
                self.writer.transport.abort()
                return False
            if verb == b"STARTTLS":
                await self._send([*out, b"220 2.0.0 go ahead"])
                self.buffer.clear()
                await self.writer.start_tls(self.mx.tls)
                self.encrypted = True
                return True
            out.append(self._answer(verb, line))
            if verb == b"QUIT":
                await self._send(out)
                return False
        await self._send(out)
        return True

    def _answer(self, verb: bytes, line: bytes) -> bytes:
        if verb == b"EHLO":
            words = [self.mx.name.encode(), b"8BITMIME"]
            words += [b"PIPELINING"] if self.mx.pipelining else []
            words += [] if self.encrypted else [b"STARTTLS"]
            return b"\r\n".join(b"250-" + w for w in words[:-1]) + b"\r\n250 " + words[-1]
        if verb == b"MAIL":
            self.mail = self.mx.mail_reply.startswith(b"2")
            return self.mx.mail_reply
        if verb == b"RCPT":
            if not self.mail:
                return b"503 5.5.1 need MAIL"
            address = line.partition(b"<")[2].partition(b">")[0].decode()
            reply = self.mx.rcpt_replies.get(address, OK)
            self.accepted += reply.startswith(b"2")
            return reply
        if verb == b"DATA":
            reply = self.mx.data_reply or (b"354 go" if self.accepted else b"554 no recipients")
            if reply.startswith(b"354"):
                self.body = bytearray()
            return reply
        if verb == b"RSET":
            self.mail, self.accepted = False, 0
            return b"250 2.0.0 reset"
        if verb == b"QUIT":
            return b"221 2.0.0 bye"
        return b"502 5.5.2 what"

    def _body_line(self, line: bytes, out: list[bytes]) -> None:
        assert self.body is not None
        if line != b".":
            self.body += line + b"\r\n"
            return
        self.mx.messages.append(bytes(self.body))
        self.body, self.mail, self.accepted = None, False, 0
        out.append(b"250 2.0.0 queued")

    async def _send(self, replies: list[bytes]) -> None:
        data = b"".join(reply + b"\r\n" for reply in replies)
        if not (self.mx.split and self.encrypted):  # the ClientHello must find no reader
            self.writer.write(data)
            return
        if self.mx.split == "replies":
            for reply in replies:
                self.writer.write(reply + b"\r\n")
                await asyncio.sleep(0)
            return
        for n in range(len(data)):
            self.writer.write(data[n : n + 1])
            await asyncio.sleep(0.001)
