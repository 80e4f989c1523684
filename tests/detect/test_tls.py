"""TLS failures to RFC 8460 result types, from real handshakes against lab certificates."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detect.model import MAX_EVIDENCE, VALIDATION_FAILURE, FindingKind
from detect.tls import (
    CERTIFICATE_EXPIRED,
    CERTIFICATE_HOST_MISMATCH,
    CERTIFICATE_NOT_TRUSTED,
    describe_tls_error,
    judge_tls_failure,
)
from lab.pki import IssuedCert, LabCA

NAME = "mx.tls.test"


async def _handshake_error(cert: IssuedCert, client: ssl.SSLContext) -> ssl.SSLError:
    """Handshake with a server presenting `cert`; the client's error."""
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.43", 0, ssl=cert.server_context()
    )
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ssl.SSLError) as info:
            await asyncio.open_connection("127.0.0.43", port, ssl=client, server_hostname=NAME)
        return info.value
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("kind", "result_type", "reason"),
    [
        ("expired", CERTIFICATE_EXPIRED, "X509_V_ERR_CERT_HAS_EXPIRED"),
        ("wrong-name", CERTIFICATE_HOST_MISMATCH, "X509_V_ERR_HOSTNAME_MISMATCH"),
        ("untrusted", CERTIFICATE_NOT_TRUSTED, "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY"),
        ("self-signed", CERTIFICATE_NOT_TRUSTED, "X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT"),
    ],
)
async def test_real_certificate_failures(
    lab_ca: LabCA, tmp_path: Path, kind: str, result_type: str, reason: str
) -> None:
    if kind == "expired":
        cert = lab_ca.issue(NAME, expired=True)
    elif kind == "wrong-name":
        cert = lab_ca.issue("not-" + NAME)
    elif kind == "untrusted":
        cert = lab_ca.untrusted().issue(NAME)
    else:
        cert = _self_signed(tmp_path)
    error = await _handshake_error(cert, lab_ca.client_context())
    assert isinstance(error, ssl.SSLCertVerificationError)
    finding = judge_tls_failure(error.verify_code, error.verify_message)
    assert finding.kind is FindingKind.TLS_FAILURE
    assert (finding.result_type, finding.reason_code) == (result_type, reason)
    assert finding.evidence == error.verify_message


def _self_signed(directory: Path) -> IssuedCert:
    """A leaf that is its own issuer (trustme's CA certificate used as the server's)."""
    import trustme

    ca = trustme.CA()
    cert_file, key_file = directory / "self.crt", directory / "self.key"
    ca.cert_pem.write_to_path(str(cert_file))
    ca.private_key_pem.write_to_path(str(key_file))
    return IssuedCert(cert_file, key_file)


async def test_handshake_failure_without_verify_code(lab_ca: LabCA) -> None:
    """A server that only speaks TLS 1.3 against a client capped at 1.2: no verify code."""
    cert = lab_ca.issue(NAME)
    client = lab_ca.client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    server_ctx = cert.server_context()
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.43", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        # The server may abort first: the client then sees a reset, not an SSL alert.
        with pytest.raises((ssl.SSLError, ConnectionError)) as info:
            await asyncio.open_connection("127.0.0.43", port, ssl=client, server_hostname=NAME)
    finally:
        server.close()
        await server.wait_closed()
    assert not isinstance(info.value, ssl.SSLCertVerificationError)
    finding = judge_tls_failure(None, str(info.value))
    assert finding.result_type == VALIDATION_FAILURE
    assert finding.reason_code == "tls-handshake-failure"


@pytest.mark.parametrize(
    ("code", "result_type", "reason_code"),
    [
        (10, CERTIFICATE_EXPIRED, "X509_V_ERR_CERT_HAS_EXPIRED"),
        (9, CERTIFICATE_EXPIRED, "X509_V_ERR_CERT_NOT_YET_VALID"),
        (62, CERTIFICATE_HOST_MISMATCH, "X509_V_ERR_HOSTNAME_MISMATCH"),
        (18, CERTIFICATE_NOT_TRUSTED, "X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT"),
        (19, CERTIFICATE_NOT_TRUSTED, "X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN"),
        (20, CERTIFICATE_NOT_TRUSTED, "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY"),
        (2, CERTIFICATE_NOT_TRUSTED, "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT"),
        (21, CERTIFICATE_NOT_TRUSTED, "X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE"),
        (24, CERTIFICATE_NOT_TRUSTED, "X509_V_ERR_INVALID_CA"),
        (27, CERTIFICATE_NOT_TRUSTED, "X509_V_ERR_CERT_UNTRUSTED"),
        (28, CERTIFICATE_NOT_TRUSTED, "X509_V_ERR_CERT_REJECTED"),
        (None, VALIDATION_FAILURE, "tls-handshake-failure"),
        (0, VALIDATION_FAILURE, "tls-handshake-failure"),
        (7, VALIDATION_FAILURE, "X509_V_ERR_7"),
        (23, VALIDATION_FAILURE, "X509_V_ERR_23"),
        (99999, VALIDATION_FAILURE, "X509_V_ERR_99999"),
    ],
)
def test_verify_code_table(code: int | None, result_type: str, reason_code: str) -> None:
    finding = judge_tls_failure(code, "certificate verify failed")
    assert finding.kind is FindingKind.TLS_FAILURE
    assert finding.result_type == result_type
    assert finding.reason_code == reason_code
    assert finding.evidence == "certificate verify failed"


@settings(max_examples=200)
@given(code=st.one_of(st.none(), st.integers()), message=st.text(max_size=500))
def test_property_any_failure_has_a_result_type(code: int | None, message: str) -> None:
    finding = judge_tls_failure(code, message)
    assert finding.result_type in {
        CERTIFICATE_EXPIRED,
        CERTIFICATE_HOST_MISMATCH,
        CERTIFICATE_NOT_TRUSTED,
        VALIDATION_FAILURE,
    }
    assert finding.evidence
    assert len(finding.evidence) <= MAX_EVIDENCE
    if message.strip() and len(message.strip()) <= MAX_EVIDENCE:
        assert finding.evidence == message.strip()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ssl.TLSVersion.TLSv1 / TLSv1_1
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
async def test_tls_10_and_11_servers_fail_with_a_reason(lab_ca: LabCA, version: str) -> None:
    """OpenSSL ends such a handshake with a bare ConnectionResetError(): its text is empty,
    which used to log ``tls-failure: `` with nothing after it."""
    from relay.tls import client_context

    server_ctx = lab_ca.issue(NAME).server_context()
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_ctx.minimum_version = server_ctx.maximum_version = getattr(ssl.TLSVersion, version)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.43", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)) as info:
            await asyncio.open_connection(
                "127.0.0.43", port, ssl=client_context(str(lab_ca.ca_file)), server_hostname=NAME
            )
    finally:
        server.close()
        await server.wait_closed()
    reason = describe_tls_error(info.value)
    assert reason.strip()
    finding = judge_tls_failure(None, reason)
    assert finding.evidence == reason
    assert finding.result_type == VALIDATION_FAILURE


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(),
        ConnectionAbortedError(),
        TimeoutError(),
        ssl.SSLError(),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        ssl.SSLCertVerificationError(),
        OSError(),
        RuntimeError(""),
    ],
)
def test_every_tls_error_has_words(exc: BaseException) -> None:
    assert describe_tls_error(exc).strip()
    assert judge_tls_failure(None, "").evidence.strip()
