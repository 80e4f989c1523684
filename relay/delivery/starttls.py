"""Where delivery reaches into aiosmtplib: the client as delivery and `stsguard probe` make it,
our own STARTTLS on it, strict reply parsing, and the message body after a 354.

aiosmtplib's `starttls()` would read and hand over the connection in one step; we need the two
apart, to look at the receive buffer between the 220 and the handshake (TLS-04) and to choose the
SSL context and SNI ourselves (STS-10). Its reply parser keeps only the last line's code and
accepts a code like "2_5"; we check every line first. Its `data()` sends DATA and the body in one
step; we need to know whether a lost connection came before or after the final dot (RFC 5321
6.1: after it, the message may have arrived). All of this touches aiosmtplib internals
(`_buffer`, `_over_ssl`, `_reset_server_state`, `_read_response_from_buffer`, `_command_lock`,
`_response_pending`), so it lives here once; pyproject.toml bounds the aiosmtplib version and
tests/relay/test_aiosmtplib_internals.py fails when one of them changes.
"""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from relay.config import Config
from relay.delivery.replies import reply_problem


class _StrictReplyProtocol(SMTPProtocol):
    """aiosmtplib's protocol, refusing malformed replies (code -1, a protocol error)."""

    def _read_response_from_buffer(self) -> aiosmtplib.SMTPResponse | None:
        problem = reply_problem(bytes(self._buffer))
        if problem is not None:
            del self._buffer[:]
            raise aiosmtplib.SMTPResponseException(-1, problem)
        return super()._read_response_from_buffer()


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
