"""The relay's client TLS against real servers on loopback: a certificate whose only name is its
subject CN (RFC 9525 drops CN-IDs), and an MX that speaks only TLS 1.0 or 1.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import dns.asyncresolver
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from lab.dns import LabDns
from lab.mx import LabMx
from lab.pki import LabCA
from mtasts.model import Mode, Policy, PolicyResult, PolicySource
from relay.config import Config, DeliveryConfig, RelayConfig
from relay.delivery.deliverer import Deliverer, DeliveryRequest
from relay.tls import client_context
from tlsrpt_emit.model import MemorySink

NAME = "mx1.example.org"


def _cn_only_pki(directory: Path) -> tuple[Path, Path, Path]:
    """(CA file, leaf cert, leaf key): a leaf naming `NAME` only in its subject CN, no SAN."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cn-only test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "leaf.pem", "leaf.key"))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.44", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.44", port, ssl=client_ctx, server_hostname=NAME
        )
        writer.close()
    finally:
        server.close()


async def test_cn_only_certificate_is_refused_under_verification(tmp_path: Path) -> None:
    ca_file, cert_file, key_file = _cn_only_pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    ctx = client_context(str(ca_file))
    assert ctx.hostname_checks_common_name is False
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        await _handshake(server_ctx, ctx)
    assert caught.value.verify_code == 62  # X509_V_ERR_HOSTNAME_MISMATCH
    # The same chain with OpenSSL's CN fallback on is accepted: the check above is what refuses.
    fallback = client_context(str(ca_file))
    fallback.hostname_checks_common_name = True
    await _handshake(server_ctx, fallback)


class _Policies:
    def __init__(self, result: PolicyResult) -> None:
        self.result = result

    async def get(self, domain: str) -> PolicyResult:
        return self.result


def _enforce() -> PolicyResult:
    text = f"version: STSv1\nmode: enforce\nmx: {NAME}\nmax_age: 86400"
    policy = Policy(Mode.ENFORCE, 86400, (NAME,), text)
    return PolicyResult("example.org", policy, PolicySource.FRESH)


def _deliverer(port: int, ca_file: Path, resolver: dns.asyncresolver.Resolver) -> Deliverer:
    from detect.history import MemoryTlsHistoryStore

    config = Config(
        relay=RelayConfig(hostname="relay.test"),
        delivery=DeliveryConfig(port=port, connect_timeout=5, command_timeout=10),
    )
    return Deliverer(
        config,
        resolver=resolver,
        policy_service=_Policies(_enforce()),  # type: ignore[arg-type]
        history_store=MemoryTlsHistoryStore(),
        sink=MemorySink(),
        ssl_context=client_context(str(ca_file)),
    )


def _request() -> DeliveryRequest:
    return DeliveryRequest(
        "q1", "alice@sender.test", ("bob@example.org",), b"Subject: x\r\n\r\nhi\r\n"
    )


async def _deliver_to(mx: LabMx, ca_file: Path, lab_dns: LabDns, host: str) -> Any:
    from relay.config import DnsConfig
    from relay.resolver import make_resolver

    lab_dns.add("example.org", "MX", f"10 {NAME}.")
    lab_dns.add(NAME, "A", host)
    resolver = make_resolver(DnsConfig(nameservers=(lab_dns.address,), timeout=2))
    async with mx.running():
        deliverer = _deliverer(mx.port, ca_file, resolver)
        with capture_logs() as logs:
            outcome = await deliverer.deliver(_request())
        await deliverer.close()
    return outcome, [e for e in logs if e["event"] == "delivery.attempt"]


async def test_enforce_defers_a_cn_only_mx(tmp_path: Path, lab_dns: LabDns) -> None:
    ca_file, cert_file, key_file = _cn_only_pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    mx = LabMx("127.0.0.45", hostname=NAME, tls_context=server_ctx)
    outcome, attempts = await _deliver_to(mx, ca_file, lab_dns, "127.0.0.45")
    assert mx.messages == []
    (rcpt,) = outcome.deferred
    assert rcpt.result_type == "certificate-host-mismatch"
    assert attempts


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ssl.TLSVersion.TLSv1 / TLSv1_1
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
async def test_tls_10_11_mx_failure_logs_a_reason(
    lab_ca: LabCA, lab_dns: LabDns, version: str
) -> None:
    server_ctx = lab_ca.issue(NAME).server_context()
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_ctx.minimum_version = server_ctx.maximum_version = getattr(ssl.TLSVersion, version)
    mx = LabMx("127.0.0.46", hostname=NAME, tls_context=server_ctx)
    outcome, attempts = await _deliver_to(mx, lab_ca.ca_file, lab_dns, "127.0.0.46")
    assert mx.messages == []
    (rcpt,) = outcome.deferred
    assert rcpt.result_type == "validation-failure"
    (attempt,) = attempts
    assert attempt["reason"].startswith("tls-failure: ")
    assert attempt["reason"].removeprefix("tls-failure: ").strip()
    (finding,) = (f for f in attempt["findings"] if f["kind"] == "tls-failure")
    assert finding["evidence"].strip()
