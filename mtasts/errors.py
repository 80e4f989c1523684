"""Errors of MTA-STS (RFC 8461).

MtastsError
├── PolicyError               no policy could be had; `.result_type` is its RFC 8460 result type
│   ├── StsRecordError        the `_mta-sts` TXT record does not parse  (sts-policy-invalid)
│   ├── StsLookupError        the TXT look-up failed: SERVFAIL, timeout  (sts-policy-fetch-error)
│   ├── PolicyInvalidError    the policy text does not parse  (sts-policy-invalid)
│   └── PolicyFetchError      the HTTPS fetch failed  (sts-policy-fetch-error)
│       └── PolicyWebPkiError the policy host's certificate did not verify  (sts-webpki-invalid)
└── PolicyStoreError          the policy cache could not be read or written (not a TLS-RPT failure)
"""

from __future__ import annotations

FETCH_ERROR = "sts-policy-fetch-error"
POLICY_INVALID = "sts-policy-invalid"
WEBPKI_INVALID = "sts-webpki-invalid"
RESULT_TYPES = (FETCH_ERROR, POLICY_INVALID, WEBPKI_INVALID)


class MtastsError(Exception):
    """Base of every error raised by `mtasts`."""


class PolicyError(MtastsError):
    """A policy (or its TXT record) could not be had; carries the RFC 8460 result type."""

    default_result_type = FETCH_ERROR

    def __init__(self, message: str, *, result_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.result_type = result_type or self.default_result_type
        if self.result_type not in RESULT_TYPES:
            raise ValueError(f"not an MTA-STS result type: {self.result_type!r}")


class StsRecordError(PolicyError):
    """The `_mta-sts.<domain>` TXT record is not a valid STSv1 record."""

    default_result_type = POLICY_INVALID


class StsLookupError(PolicyError):
    """The `_mta-sts.<domain>` look-up itself failed; not the same as no record."""

    default_result_type = FETCH_ERROR


class PolicyInvalidError(PolicyError):
    """The policy text is not a valid STSv1 policy; `line` is the 1-based line at fault, or 0."""

    default_result_type = POLICY_INVALID

    def __init__(self, message: str, *, line: int = 0) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


class PolicyFetchError(PolicyError):
    """The policy could not be fetched: DNS, connection, status, media type, size or time."""

    default_result_type = FETCH_ERROR


class PolicyWebPkiError(PolicyFetchError):
    """The policy host's certificate is expired, for another name or not from a trusted CA."""

    default_result_type = WEBPKI_INVALID


class PolicyStoreError(MtastsError):
    """The policy store could not be opened, read or written."""
