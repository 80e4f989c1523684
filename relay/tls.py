"""SSL contexts for talking to MX and policy hosts: system trust store plus `[tls].ca_file`.

MX sessions (STS-10) first use the verifying context with SNI = the MX host name; when the
certificate fails and the policy lets delivery go on (testing, opportunistic, encrypt), the
deliverer connects again with `unverified_context` and records the failure it saw the first time.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from relay.errors import ConfigError

# OpenSSL X509_V_ERR_* codes that map to a specific RFC 8460 result type.
_EXPIRED = {10, 12}  # CERT_HAS_EXPIRED, CRL_HAS_EXPIRED
_HOST_MISMATCH = {62}  # HOSTNAME_MISMATCH
_NOT_TRUSTED = {2, 18, 19, 20, 21, 27}  # unable to get issuer / self-signed / untrusted


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


def unverified_context() -> ssl.SSLContext:
    """A client context that encrypts without checking the certificate (opportunistic TLS).

    Any TLS version the library allows: RFC 7435 prefers weak encryption to none at all.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(frozen=True, slots=True)
class CertFailure:
    """Why a certificate did not verify: RFC 8460 result type, reason code and the words."""

    result_type: str
    reason_code: str
    message: str


def classify_cert_error(verify_code: int | None, message: str) -> CertFailure:
    """The RFC 8460 result type of an `ssl.SSLCertVerificationError` (code and message)."""
    code = verify_code if verify_code is not None else -1
    lowered = message.lower()
    if code in _EXPIRED or "expired" in lowered:
        result_type = "certificate-expired"
    elif code in _HOST_MISMATCH or "hostname mismatch" in lowered or "doesn't match" in lowered:
        result_type = "certificate-host-mismatch"
    elif code in _NOT_TRUSTED or "issuer" in lowered or "self-signed" in lowered:
        result_type = "certificate-not-trusted"
    else:
        result_type = "validation-failure"
    return CertFailure(result_type, f"X509_V_ERR_{code}" if code >= 0 else "", message)
