"""SSL contexts for talking to MX and policy hosts: system trust store plus `[tls].ca_file`.

MX sessions (STS-10) first use the verifying context with SNI = the MX host name; when the
certificate fails and the policy lets delivery go on (testing, opportunistic, encrypt), the
deliverer connects again with `unverified_context` and records the failure it saw the first time
(`detect.tls.judge_tls_failure` names its RFC 8460 result type).
"""

from __future__ import annotations

import ssl

from relay.errors import ConfigError


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """A verifying client context (TLS 1.2+, host name checked) trusting the system store and
    `ca_file`.

    The name is checked against the subjectAltName only: RFC 9525 (6.3) drops the CN-ID, so a
    certificate whose only name is its subject CN does not match (OpenSSL would fall back to it).
    """
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.hostname_checks_common_name = False
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[tls].ca_file: cannot load {ca_file!r}: {exc}") from None
    return ctx


def unverified_context() -> ssl.SSLContext:
    """A client context that encrypts without checking the certificate (opportunistic TLS).

    Any TLS version the library allows: RFC 7435 prefers weak encryption to none at all.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
