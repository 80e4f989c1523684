"""Map a failed TLS handshake or certificate check to its RFC 8460 result type (section 4.3)."""

from __future__ import annotations

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


def judge_tls_failure(verify_code: int | None, message: str) -> Finding:
    """A `tls-failure` finding. Without a verify code (handshake failure, protocol version too
    low, connection reset) the result type is validation-failure with the message as reason."""
    name, result_type = _VERIFY_CODES.get(
        verify_code if verify_code is not None else -1,
        (
            f"X509_V_ERR_{verify_code}" if verify_code else "tls-handshake-failure",
            VALIDATION_FAILURE,
        ),
    )
    return Finding(
        FindingKind.TLS_FAILURE,
        evidence=message[:300],
        result_type=result_type,
        expected="a certificate valid for the MX host name, chained to a trusted root",
        reason_code=name,
    )
