"""A recipient MX for the tests and the lab: aiosmtpd on a loopback address, optional STARTTLS.

    mx = LabMx.with_cert(lab_ca, "mx.example.org", host="127.0.0.10", cert=CertKind.GOOD)
    async with mx.running():
        ...  # deliver to 127.0.0.10:mx.port
    mx.messages[0].tls   # True when it came over TLS

Each message is recorded with its envelope, data and TLS facts; `connections` counts TCP
connections, so tests can check connection reuse. Misbehaving MX hosts for the tests:
`mail_reply` / `rcpt_reply` answer MAIL / RCPT with that text as it is (a 2xx still takes the
address: ``"252 2.1.5 cannot verify"``; garbage or a multi-line reply is sent raw), and `drop`
closes the connection without a reply at "rcpt" (before the message) or "data" (after the final
dot: the message is recorded, as it may have arrived); "stall" records it and never answers.

With `pipelining` set the MX offers PIPELINING (RFC 2920) in its EHLO replies; aiosmtpd reads
commands from one stream in order, so a pipelined group is answered reply by reply.

REQUIRETLS (RFC 8689): with `requiretls` set the MX offers it in the EHLO reply after STARTTLS
and takes ``MAIL FROM:<...> REQUIRETLS`` there (aiosmtpd itself refuses the parameter with 555);
`ReceivedMessage.requiretls` says whether the message came with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from lab.pki import LabCA


class CertKind(StrEnum):
    """What certificate the MX presents after STARTTLS (NONE: no STARTTLS offered)."""

    GOOD = "good"
    EXPIRED = "expired"
    WRONG_NAME = "wrong-name"
    UNTRUSTED = "untrusted"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool
    tls_version: str | None
    helo: str
    requiretls: bool = False


def _as_bytes(content: bytes | str | None) -> bytes:
    if content is None:
        return b""
    return content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content


class _Handler:
    def __init__(self, mx: LabMx) -> None:
        self.mx = mx

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> list[str]:
        session.host_name = hostname
        lines = list(responses)
        if self.mx.pipelining:
            lines.insert(len(lines) - 1, "250-PIPELINING")
        if self.mx.requiretls and session.ssl:
            lines.insert(len(lines) - 1, "250-REQUIRETLS")
        return lines

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        reply = self.mx.mail_reply
        return reply if reply is not None else "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.mx.drop == "rcpt":
            _drop(server)
            return "421 dropped"  # never reaches the client
        reply = self.mx.rcpt_reply
        if reply is None or reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply if reply is not None else "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        ssl_object = session.ssl.get("ssl_object") if session.ssl else None
        self.mx.messages.append(
            ReceivedMessage(
                mail_from=str(envelope.mail_from),
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=_as_bytes(envelope.original_content or envelope.content),
                tls=ssl_object is not None,
                tls_version=ssl_object.version() if ssl_object is not None else None,
                helo=str(session.host_name or ""),
                requiretls="REQUIRETLS" in envelope.mail_options,
            )
        )
        if self.mx.drop == "data":
            _drop(server)
        elif self.mx.drop == "stall":
            await asyncio.Event().wait()  # never answers the final dot (until stopped)
        return "250 OK queued"


class _RequireTlsSMTP(SMTP):
    """aiosmtpd's SMTP that takes REQUIRETLS at MAIL over TLS when its MX offers it."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.mx = handler.mx

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        words = (arg or "").split()
        asked = "REQUIRETLS" in (w.upper() for w in words)
        if asked and self.mx.requiretls and self._tls_protocol is not None:
            arg = " ".join(w for w in words if w.upper() != "REQUIRETLS")
        else:
            asked = False
        await super().smtp_MAIL(arg)
        if asked and self.envelope is not None and self.envelope.mail_from:
            self.envelope.mail_options.append("REQUIRETLS")


def _drop(server: SMTP) -> None:
    """Close the connection at once: the client reads no reply."""
    if isinstance(server.transport, asyncio.Transport):
        server.transport.abort()


class LabMx:
    """An SMTP server that accepts every message and remembers it."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        hostname: str = "mx.lab.example",
        tls_context: ssl.SSLContext | None = None,
        rcpt_reply: str | None = None,
        mail_reply: str | None = None,
        drop: str | None = None,
    ) -> None:
        self.host = host
        self.hostname = hostname
        self.tls_context = tls_context
        self.rcpt_reply = rcpt_reply  # e.g. "550 5.1.1 no such user": reject every recipient
        self.mail_reply = mail_reply  # e.g. "251 OK" or garbage
        self.drop = drop  # None | "rcpt" | "data" | "stall": no reply there
        self.messages: list[ReceivedMessage] = []
        self.smtputf8 = False  # offer SMTPUTF8 (RFC 6531) to connections from now on
        self.requiretls = False  # offer REQUIRETLS after STARTTLS (RFC 8689) from now on
        self.pipelining = False  # offer PIPELINING (RFC 2920) from now on
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._protocols: list[SMTP] = []

    @classmethod
    def with_cert(
        cls,
        ca: LabCA,
        hostname: str,
        *,
        host: str = "127.0.0.1",
        cert: CertKind = CertKind.GOOD,
        rcpt_reply: str | None = None,
        mail_reply: str | None = None,
        drop: str | None = None,
    ) -> LabMx:
        """An MX named `hostname` presenting the kind of certificate `cert` says."""
        context: ssl.SSLContext | None
        if cert is CertKind.NONE:
            context = None
        elif cert is CertKind.GOOD:
            context = ca.issue(hostname).server_context()
        elif cert is CertKind.EXPIRED:
            context = ca.issue(hostname, expired=True).server_context()
        elif cert is CertKind.WRONG_NAME:
            context = ca.issue(f"not-{hostname}").server_context()
        else:
            context = ca.untrusted().issue(hostname).server_context()
        return cls(
            host,
            hostname=hostname,
            tls_context=context,
            rcpt_reply=rcpt_reply,
            mail_reply=mail_reply,
            drop=drop,
        )

    def make_handler(self) -> _Handler:
        """The aiosmtpd handler that records into this MX (for custom SMTP subclasses)."""
        return _Handler(self)

    def _protocol(self) -> SMTP:
        self.connections += 1
        protocol = _RequireTlsSMTP(
            self.make_handler(),
            hostname=self.hostname,
            ident="stsguard lab MX",
            tls_context=self.tls_context,
            require_starttls=False,
            enable_SMTPUTF8=self.smtputf8,
            timeout=30,
        )
        self._protocols.append(protocol)
        return protocol

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for protocol in self._protocols:
                if protocol.transport is not None:
                    protocol.transport.close()
            self._protocols.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None

    @contextlib.asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[LabMx]:
        await self.start(port)
        try:
            yield self
        finally:
            await self.stop()
