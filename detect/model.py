"""Typed observations of one SMTP session and the findings judged from them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FindingKind(StrEnum):
    """The kinds of tampering or failure that `detect` reports."""

    STARTTLS_STRIPPED = "starttls-stripped"
    STARTTLS_GARBLED = "starttls-garbled"
    STARTTLS_REJECTED = "starttls-rejected"  # 454 / 501
    STARTTLS_BAD_REPLY = "starttls-bad-reply"  # any other code, or garbage
    PLAINTEXT_INJECTION = "plaintext-injection"  # bytes after the 220, before the handshake
    EHLO_REFUSED = "ehlo-refused"  # EHLO answered with an error: the HELO downgrade
    MASKED_REPLY = "masked-reply"  # banner or EHLO lines masked with runs of '*' or 'X'
    TLS_FAILURE = "tls-failure"  # handshake or certificate check failed
    DOWNGRADE = "downgrade"  # the host did better within detect.history_days
    TLSA_MISMATCH = "tlsa-mismatch"  # DANE: the chain does not satisfy the TLSA records


STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
VALIDATION_FAILURE = "validation-failure"


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding with its evidence: the raw line or bytes, and what was expected.

    `result_type` is the RFC 8460 result type the finding is reported as in TLS-RPT;
    `reason_code` is its `failure-reason-code` (e.g. ``X509_V_ERR_CERT_HAS_EXPIRED``).
    """

    kind: FindingKind
    evidence: str
    result_type: str = STARTTLS_NOT_SUPPORTED
    expected: str = ""
    reason_code: str = ""

    def as_log(self) -> dict[str, str]:
        return {
            "kind": str(self.kind),
            "evidence": self.evidence,
            "result_type": self.result_type,
            "expected": self.expected,
            "reason_code": self.reason_code,
        }


@dataclass(frozen=True, slots=True)
class EhloJudgement:
    """What an EHLO reply offered, and what was wrong with it."""

    offers_starttls: bool
    keywords: tuple[str, ...]
    server_name: str
    findings: tuple[Finding, ...] = ()
