"""Where delivery reaches into aiosmtplib: the client as delivery and `stsguard probe` make it,
our own STARTTLS on it, strict reply parsing, and the message body after a 354.

aiosmtplib's `starttls()` would read and hand over the connection in one step; we need the two
apart, to look at the receive buffer between the 220 and the handshake (TLS-04) and to choose the
SSL context and SNI ourselves (STS-10). Its reply parser keeps only the last line's code and
accepts a code like "2_5"; we check every line first. Its `data()` sends DATA and the body in one
step; we need to know whether a lost connection came before or after the final dot (RFC 5321
6.1: after it, the message may have arrived). It reads one reply per command written and drops
bytes nobody waits for; a pipelined group (RFC 2920) has several replies in flight, which may
come in one segment. All of this touches aiosmtplib internals (`_buffer`, `_over_ssl`,
`_reset_server_state`, `_read_response_from_buffer`, `_command_lock`, `_response_pending`,
`_response_waiter`, `data_received`, `read_response`, `MAX_RESPONSE_LENGTH`,
`COMMAND_INJECTION_REGEX`), so it lives here
once; pyproject.toml bounds the aiosmtplib version and tests/relay/test_aiosmtplib_internals.py
fails when one of them changes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

import aiosmtplib
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX, MAX_RESPONSE_LENGTH, SMTPProtocol

from relay.config import Config
from relay.delivery.replies import reply_problem


class _StrictReplyProtocol(SMTPProtocol):
    """aiosmtplib's protocol, refusing malformed replies (code -1, a protocol error). While a
    pipelined group's replies are read (`_pipelining`), bytes that come when no reply is awaited
    are kept in the buffer (aiosmtplib would drop them): they are the next commands' replies."""

    # Class attributes: `strict_replies` swaps the class of a protocol made by aiosmtplib.
    _pipelining = False
    _pipeline_cap = MAX_RESPONSE_LENGTH  # at most this much kept for the replies to come
    _overflow = False  # more than that came while no reply was awaited

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        if (
            self._pipelining
            and waiter is not None
            and (waiter.done() or not self._response_pending)
        ):
            if len(self._buffer) + len(data) > self._pipeline_cap:
                del self._buffer[:]
                self._overflow = True
            else:
                self._buffer.extend(data)
            return
        super().data_received(data)

    def _read_response_from_buffer(self) -> aiosmtplib.SMTPResponse | None:
        problem = reply_problem(bytes(self._buffer))
        if problem is not None:
            del self._buffer[:]
            raise aiosmtplib.SMTPResponseException(-1, problem)
        return super()._read_response_from_buffer()

    async def next_reply(self, reply_timeout: float | None) -> aiosmtplib.SMTPResponse:
        """The next reply of a pipelined group: one already in the buffer (it came with an
        earlier one, or before we asked), else the next to arrive within `reply_timeout`."""
        if self._overflow:
            raise aiosmtplib.SMTPResponseException(-1, "Response too long")
        reply = self._read_response_from_buffer()
        if reply is not None:
            return reply
        return await self.read_response(timeout=reply_timeout)


def mx_client(config: Config, ip: str) -> aiosmtplib.SMTP:
    """An unconnected client for the MX at `ip`: our EHLO name, `[delivery]` port and command
    timeout, and no automatic STARTTLS (we send it ourselves, see `upgrade_to_tls`)."""
    return aiosmtplib.SMTP(
        hostname=ip,
        port=config.delivery.port,
        local_hostname=config.relay.hostname,
        start_tls=False,
        use_tls=False,
        timeout=config.delivery.command_timeout,
    )


def strict_replies(client: aiosmtplib.SMTP) -> None:
    """From now on, a reply line without a valid code, or a multi-line reply whose codes
    disagree, is an `SMTPResponseException` with code -1 (call after `connect`)."""
    if client.protocol is not None:
        client.protocol.__class__ = _StrictReplyProtocol


def buffered_after_reply(client: aiosmtplib.SMTP) -> bytes:
    """Bytes the peer sent after the reply just read (empty on an honest STARTTLS 220)."""
    protocol = client.protocol
    return bytes(protocol._buffer) if protocol is not None else b""


async def send_body(client: aiosmtplib.SMTP, body: bytes) -> aiosmtplib.SMTPResponse:
    """After a 354: write the message (dot-stuffed, ending in CRLF.CRLF) and read the final
    reply. A lost connection or timeout closes the client and raises."""
    protocol = client.protocol
    if protocol is None or protocol._command_lock is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost before the message")
    try:
        async with protocol._command_lock:
            protocol._response_pending = True  # aiosmtplib drops data it does not wait for
            protocol.write(body)
            return await protocol.read_response(timeout=client.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise


async def pipelined(
    client: aiosmtplib.SMTP, commands: Sequence[Sequence[bytes]]
) -> list[aiosmtplib.SMTPResponse]:
    """RFC 2920: the commands (each its words) in one write, then their replies in order, each
    within the client's timeout. A lost connection or timeout closes the client and raises; so
    does a malformed reply (code -1). After a 421 the client is closed, as aiosmtplib does."""
    for words in commands:
        if any(COMMAND_INJECTION_REGEX.search(word) for word in words):  # as execute_command
            raise ValueError("Command arg contains a prohibited control character")
    protocol = client.protocol
    if protocol is None or protocol._command_lock is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost before the commands")
    if not isinstance(protocol, _StrictReplyProtocol):
        raise TypeError("pipelining needs strict_replies() on the connection")
    try:
        async with protocol._command_lock:
            replies = await _exchange(protocol, commands, client.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    if any(reply.code == 421 for reply in replies):
        client.close()
    return replies


async def _exchange(
    protocol: _StrictReplyProtocol, commands: Sequence[Sequence[bytes]], reply_timeout: float | None
) -> list[aiosmtplib.SMTPResponse]:
    """Write the group and read its replies, keeping every byte that comes meanwhile."""
    protocol._pipelining = True
    # Room for the replies to come, bounded whatever the group's size (a hostile MX cannot make
    # a long recipient list cost more than this).
    protocol._pipeline_cap = MAX_RESPONSE_LENGTH * min(len(commands), 4)
    protocol._response_pending = True  # aiosmtplib drops data it does not wait for
    try:
        protocol.write(b"".join(b" ".join(words) + b"\r\n" for words in commands))
        return [await protocol.next_reply(reply_timeout) for _ in commands]
    finally:
        protocol._pipelining = protocol._overflow = protocol._response_pending = False


async def upgrade_to_tls(
    client: aiosmtplib.SMTP,
    context: ssl.SSLContext,
    server_hostname: str,
    *,
    handshake_timeout: float,
) -> None:
    """The TLS handshake after our STARTTLS got its 220, with SNI = `server_hostname`; then the
    session state learned in plaintext is forgotten (TLS-03)."""
    protocol = client.protocol
    if protocol is None or protocol.transport is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost before the handshake")
    loop = asyncio.get_running_loop()
    transport = await loop.start_tls(
        protocol.transport,  # type: ignore[arg-type]
        protocol,
        context,
        server_side=False,
        server_hostname=server_hostname,
        ssl_handshake_timeout=handshake_timeout,
    )
    if transport is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost during the handshake")
    protocol.transport = transport
    protocol._over_ssl = True
    client.transport = transport
    client._reset_server_state()
