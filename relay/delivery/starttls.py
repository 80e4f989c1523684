"""Connections to recipient MX hosts: the aiosmtplib client as delivery and `stsguard probe`
both make it, and our own STARTTLS on it (what was buffered after the 220, and the upgrade).

aiosmtplib's `starttls()` would read and hand over the connection in one step; we need the two
apart, to look at the receive buffer between the 220 and the handshake (TLS-04) and to choose the
SSL context and SNI ourselves (STS-10). Both touch aiosmtplib internals, so they live here once.
"""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib

from relay.config import Config


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


def buffered_after_reply(client: aiosmtplib.SMTP) -> bytes:
    """Bytes the peer sent after the reply just read (empty on an honest STARTTLS 220)."""
    protocol = client.protocol
    return bytes(protocol._buffer) if protocol is not None else b""


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
