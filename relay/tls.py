"""SSL contexts for talking to MX and policy hosts: system trust store plus `[tls].ca_file`.

MX sessions (STS-10) first use the verifying context with SNI = the MX host name; when the
certificate fails and the policy lets delivery go on (testing, opportunistic, encrypt), the
deliverer connects again with `unverified_context` and records the failure it saw the first time
(`detect.tls.judge_tls_failure` names its RFC 8460 result type).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

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


def _pem_certificate(cert_file: str) -> tuple[x509.Certificate | None, str | None]:
    try:
        data = Path(cert_file).read_bytes()
    except OSError as exc:
        return None, f"cannot read {cert_file}: {exc.strerror or exc}"
    try:
        return x509.load_pem_x509_certificates(data)[0], None
    except ValueError:
        if b"PRIVATE KEY-----" in data:
            return None, f"{cert_file} holds a private key, not a certificate (files swapped?)"
        return None, f"{cert_file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"


def pem_pair_problem(cert_file: str, key_file: str) -> str | None:
    """What is wrong with a certificate and key pair, naming the file: OpenSSL's own error for a
    bad file is ``[SSL] PEM lib (_ssl.c:3905)``, which names none."""
    cert, problem = _pem_certificate(cert_file)
    if problem:
        return problem
    try:
        data = Path(key_file).read_bytes()
    except OSError as exc:
        return f"cannot read {key_file}: {exc.strerror or exc}"
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        return f"{key_file} is encrypted with a passphrase; the relay needs it without one"
    except ValueError:
        if b"CERTIFICATE-----" in data:
            return f"{key_file} holds a certificate, not a private key (files swapped?)"
        return f"{key_file} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"
    assert cert is not None
    if key.public_key() != cert.public_key():
        return f"the key in {key_file} is not the key of the certificate in {cert_file}"
    return None


def report_endpoint_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server context of the TLS report endpoint (`[tlsrpt_inbound]`); `ConfigError` names
    the key when the pair cannot be loaded."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        why = pem_pair_problem(cert_file, key_file) or str(exc)
        raise ConfigError(
            f"[tlsrpt_inbound].tls_cert_file: cannot load certificate and key: {why}"
        ) from None
    return ctx
