"""SSL contexts for talking to MX and policy hosts: system trust store plus `[tls].ca_file`."""

from __future__ import annotations

import ssl

from relay.errors import ConfigError


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """A verifying client context (TLS 1.2+, host name checked) trusting the system store and
    `ca_file`."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[tls].ca_file: cannot load {ca_file!r}: {exc}") from None
    return ctx
