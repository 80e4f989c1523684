"""Map a failed TLS handshake or certificate check to its RFC 8460 result type (section 4.3)."""

from __future__ import annotations

import ssl

from detect.model import VALIDATION_FAILURE, Finding, FindingKind

CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"

# OpenSSL X509_V_ERR_* codes (as in ssl.SSLCertVerificationError.verify_code) -> (name, type)
_VERIFY_CODES: dict[int, tuple[str, str]] = {
    2: ("X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT", CERTIFICATE_NOT_TRUSTED),
    9: ("X509_V_ERR_CERT_NOT_YET_VALID", CERTIFICATE_EXPIRED),
    10: ("X509_V_ERR_CERT_HAS_EXPIRED", CERTIFICATE_EXPIRED),
    18: ("X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT", CERTIFICATE_NOT_TRUSTED),
    19: ("X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN", CERTIFICATE_NOT_TRUSTED),
    20: ("X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY", CERTIFICATE_NOT_TRUSTED),
    21: ("X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE", CERTIFICATE_NOT_TRUSTED),
    24: ("X509_V_ERR_INVALID_CA", CERTIFICATE_NOT_TRUSTED),
    27: ("X509_V_ERR_CERT_UNTRUSTED", CERTIFICATE_NOT_TRUSTED),
    28: ("X509_V_ERR_CERT_REJECTED", CERTIFICATE_NOT_TRUSTED),
    62: ("X509_V_ERR_HOSTNAME_MISMATCH", CERTIFICATE_HOST_MISMATCH),
}


NO_DETAIL = "TLS handshake failed without a reason from the TLS library"
CLOSED_IN_HANDSHAKE = (
    "connection closed during the TLS handshake without an alert"
    " (a server that offers only TLS 1.0/1.1 does this; TLS 1.2 is the minimum)"
)


def describe_tls_error(exc: BaseException) -> str:
    """Words for a failed handshake, never empty. A peer limited to TLS 1.0/1.1 makes OpenSSL
    end the handshake with a bare ``ConnectionResetError()``, whose text is ``""``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return getattr(exc, "verify_message", None) or str(exc) or NO_DETAIL
    if isinstance(exc, ssl.SSLError):
        text = str(exc)
        reason = getattr(exc, "reason", None) or ""
        return text if reason in text else f"{reason}: {text}".strip(": ") or NO_DETAIL
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, EOFError)) and not str(exc):
        return CLOSED_IN_HANDSHAKE
    if isinstance(exc, TimeoutError) and not str(exc):
        return "TLS handshake timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} ({NO_DETAIL})"


def judge_tls_failure(verify_code: int | None, message: str) -> Finding:
    """A `tls-failure` finding. Without a verify code (handshake failure, protocol version too
    low, connection reset) the result type is validation-failure with the message as reason; an
    empty message becomes `NO_DETAIL` (pass `describe_tls_error(exc)` to say more)."""
    name, result_type = _VERIFY_CODES.get(
        verify_code if verify_code is not None else -1,
        (
            f"X509_V_ERR_{verify_code}" if verify_code else "tls-handshake-failure",
            VALIDATION_FAILURE,
        ),
    )
    return Finding(
        FindingKind.TLS_FAILURE,
        evidence=message.strip() or NO_DETAIL,
        result_type=result_type,
        expected="a certificate valid for the MX host name, chained to a trusted root",
        reason_code=name,
    )
