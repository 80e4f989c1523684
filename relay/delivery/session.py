"""One SMTP connection to one MX address, step by step, each step judged by `detect/`.

    session = MxSession(config, "192.0.2.1", "mx.example.org")
    banner = await session.open()                     # connect, banner (judged)
    ehlo = await session.hello(expect_starttls=True)  # EHLO (judged: stripped, garbled, masked)
    step = await session.starttls()                   # our STARTTLS, reply and buffer judged
    tls = await session.handshake(context)            # SNI = the MX host name (STS-10)
    again = await session.hello_again()               # EHLO over TLS (TLS-03)

Delivery (`relay.delivery.negotiate`) and `stsguard probe` drive the same steps; what to do after
each is theirs to decide. Every aiosmtplib, socket and timeout error of a step becomes a
`SessionError` (its `__cause__` is the original) and leaves the connection closed; a failed TLS
handshake is not an error but a judged `TlsStep`.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

import aiosmtplib

from detect.ehlo import judge_banner, judge_ehlo
from detect.model import EhloJudgement, Finding
from detect.starttls import judge_pre_handshake_bytes, judge_starttls_reply
from detect.tls import describe_tls_error, judge_tls_failure
from relay.config import Config
from relay.delivery.dane_tls import presented_chain
from relay.delivery.starttls import (
    buffered_after_reply,
    mx_client,
    pipelined,
    send_body,
    strict_replies,
    upgrade_to_tls,
)
from relay.errors import SessionError

# What a broken or silent peer raises through aiosmtplib (ssl.SSLError is an OSError).
WIRE_ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: code and text (lines joined with newlines)."""

    code: int
    text: str

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text}


@dataclass(frozen=True, slots=True)
class Hello:
    """An EHLO reply and its judgement."""

    code: int
    text: str
    judgement: EhloJudgement

    @property
    def ok(self) -> bool:
        return self.code == 250


@dataclass(frozen=True, slots=True)
class StartTlsStep:
    """The reply to our STARTTLS; `refusal` judges a non-220, `injection` bytes after a 220."""

    reply: Reply
    refusal: Finding | None
    injection: Finding | None


@dataclass(frozen=True, slots=True)
class TlsStep:
    """The TLS handshake: a session (version, cipher, peer certificate) or the judged failure.
    `cert_failure` is True when the handshake failed on certificate verification."""

    finding: Finding | None = None
    cert_failure: bool = False
    version: str | None = None
    cipher: str | None = None
    peer_der: bytes | None = None
    error: BaseException | None = None
    chain_der: tuple[bytes, ...] = ()  # what the server sent, leaf first (for DANE)


class ConnectFailed(SessionError):
    """No SMTP connection could be had (refused, unreachable, timed out before the banner)."""


class BannerRefused(SessionError):
    """The MX greeted with a non-220 banner; `banner` is what it said."""

    def __init__(self, banner: Reply) -> None:
        judged = judge_banner(banner.code, banner.text)
        super().__init__(f"banner {banner.code} {banner.text}", judged)
        self.banner = banner


def judged_hello(code: int, text: str, *, expect_starttls: bool) -> Hello:
    """An EHLO reply and its judgement (stripped, garbled, masked STARTTLS)."""
    judgement = judge_ehlo(code, text.split("\n"), expect_starttls=expect_starttls)
    return Hello(code, text, judgement)


def judged_starttls(code: int, text: str, buffered: bytes) -> StartTlsStep:
    """The reply to our STARTTLS and what was buffered after a 220 (TLS-04), judged."""
    refusal = judge_starttls_reply(code, text)
    injection = judge_pre_handshake_bytes(buffered) if code == 220 else None
    return StartTlsStep(Reply(code, text), refusal, injection)


class MxConnection(Protocol):
    """What negotiation, transfer and the pool drive: `MxSession` on the wire, a scripted
    fake in tests (`tests/relay/fake_mx.py`)."""

    server_name: str

    async def open(self) -> tuple[Reply, tuple[Finding, ...]]: ...
    async def hello(self, *, expect_starttls: bool) -> Hello: ...
    async def helo(self) -> None: ...
    async def starttls(self) -> StartTlsStep: ...
    async def handshake(self, context: ssl.SSLContext, *, sni: str | None = None) -> TlsStep: ...
    async def hello_again(self) -> Hello: ...
    async def command(self, *args: bytes) -> Reply: ...
    async def pipeline(self, *commands: tuple[bytes, ...]) -> list[Reply]: ...
    async def message_body(self, body: bytes) -> Reply: ...
    def supports(self, extension: str) -> bool: ...
    @property
    def sending_ip(self) -> str: ...
    @property
    def is_connected(self) -> bool: ...
    def close(self) -> None: ...
    async def quit(self, *, grace: float = 1.0) -> None: ...


class MxSession:
    """An aiosmtplib client to one MX address, driven one judged step at a time."""

    def __init__(self, config: Config, ip: str, server_name: str) -> None:
        self.config = config
        self.ip = ip
        self.server_name = server_name  # the MX host name: SNI and certificate name (STS-10)
        self.client = mx_client(config, ip)
        self._name = config.relay.hostname.encode("ascii")
        self._local_ip = ""

    async def open(self) -> tuple[Reply, tuple[Finding, ...]]:
        """Connect and read the banner. A refused banner raises `SessionError` carrying its
        judged findings (`BannerRefused`)."""
        try:
            banner = await self.client.connect(timeout=self.config.delivery.connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as exc:
            self.close()
            raise BannerRefused(Reply(exc.code, exc.message)) from exc
        except WIRE_ERRORS as exc:
            self.close()
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        strict_replies(self.client)
        sockname = self.client.get_transport_info("sockname")
        self._local_ip = str(sockname[0]) if sockname else ""
        return Reply(banner.code, banner.message), judge_banner(banner.code, banner.message)

    async def hello(self, *, expect_starttls: bool) -> Hello:
        """EHLO, judged; on 250 aiosmtplib learns the extensions from it."""
        ehlo = await self._command(b"EHLO", self._name)
        if ehlo.code == 250:
            self.client.last_ehlo_response = ehlo
        return judged_hello(ehlo.code, ehlo.message, expect_starttls=expect_starttls)

    async def helo(self) -> None:
        """HELO (RFC 5321 4.1.1.1 fallback after a refused EHLO)."""
        try:
            await self.client.helo()
        except WIRE_ERRORS as exc:
            raise self._lost(exc) from exc

    async def starttls(self) -> StartTlsStep:
        """Send STARTTLS ourselves and look at the receive buffer after a 220 (TLS-04)."""
        reply = await self._command(b"STARTTLS")
        buffered = buffered_after_reply(self.client) if reply.code == 220 else b""
        return judged_starttls(reply.code, reply.message, buffered)

    async def handshake(self, context: ssl.SSLContext, *, sni: str | None = None) -> TlsStep:
        """The TLS handshake with SNI = the MX host name (under DANE `sni`, the TLSA base
        domain: RFC 7672 8.1). A failure is judged (RFC 8460 result type) and closes the
        connection."""
        try:
            await upgrade_to_tls(
                self.client,
                context,
                sni or self.server_name,
                handshake_timeout=self.config.delivery.command_timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            self.close()
            finding = judge_tls_failure(exc.verify_code, exc.verify_message or str(exc))
            return TlsStep(finding, cert_failure=True, error=exc)
        except WIRE_ERRORS as exc:  # ssl.SSLError is an OSError
            self.close()
            return TlsStep(judge_tls_failure(None, describe_tls_error(exc)), error=exc)
        ssl_object = self.client.get_transport_info("ssl_object")
        if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
            return TlsStep()
        cipher = ssl_object.cipher()
        return TlsStep(
            version=ssl_object.version(),
            cipher=cipher[0] if cipher else None,
            peer_der=ssl_object.getpeercert(binary_form=True),
            chain_der=presented_chain(ssl_object),
        )

    async def hello_again(self) -> Hello:
        """EHLO over TLS: what was learned in plaintext is forgotten (TLS-03)."""
        return await self.hello(expect_starttls=False)

    async def command(self, *args: bytes) -> Reply:
        """One SMTP command and its reply (MAIL, RCPT, DATA, RSET)."""
        reply = await self._command(*args)
        return Reply(reply.code, reply.message)

    async def pipeline(self, *commands: tuple[bytes, ...]) -> list[Reply]:
        """RFC 2920 (when the EHLO offered PIPELINING): the commands, each given as its words,
        in one write, then their replies in order (MAIL, the RCPTs, DATA)."""
        try:
            replies = await pipelined(self.client, commands)
        except WIRE_ERRORS as exc:
            raise self._lost(exc) from exc
        return [Reply(reply.code, reply.message) for reply in replies]

    async def message_body(self, body: bytes) -> Reply:
        """After a 354: the dot-stuffed message and its final reply."""
        try:
            reply = await send_body(self.client, body)
        except WIRE_ERRORS as exc:
            raise self._lost(exc) from exc
        return Reply(reply.code, reply.message)

    def supports(self, extension: str) -> bool:
        """True when the last EHLO offered `extension` (e.g. "smtputf8")."""
        return self.client.supports_extension(extension)

    @property
    def sending_ip(self) -> str:
        """Our end of the connection, kept after it closed ("" when it never connected)."""
        return self._local_ip

    @property
    def is_connected(self) -> bool:
        return self.client.is_connected

    def close(self) -> None:
        """Drop the connection without QUIT (a tampered path or a broken session)."""
        with contextlib.suppress(Exception):
            self.client.close()

    async def quit(self, *, grace: float = 1.0) -> None:
        """QUIT politely if the session is still up; close it either way."""
        try:
            if self.client.is_connected:
                await self.client.quit(timeout=grace)
        except WIRE_ERRORS:
            pass
        finally:
            self.close()

    async def _command(self, *args: bytes) -> aiosmtplib.SMTPResponse:
        try:
            return await self.client.execute_command(*args)
        except WIRE_ERRORS as exc:
            raise self._lost(exc) from exc

    def _lost(self, exc: BaseException) -> SessionError:
        self.close()
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code == -1:
            return SessionError(f"protocol error: {exc.message}")  # a malformed reply
        return SessionError(f"{type(exc).__name__}: {exc}")
