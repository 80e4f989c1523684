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

MAX_EVIDENCE = 300
"""Characters of evidence kept in a finding (so in logs, reasons and TLS-RPT reports): a peer
decides how long its EHLO reply is, not us."""


def bounded_evidence(text: str) -> str:
    """`text` cut to at most `MAX_EVIDENCE` characters; a cut one ends with its original length
    (``...[28904 characters in all]``)."""
    if len(text) <= MAX_EVIDENCE:
        return text
    note = f"...[{len(text)} characters in all]"
    return text[: MAX_EVIDENCE - len(note)] + note


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding with its evidence: the raw line or bytes, and what was expected.

    `result_type` is the RFC 8460 result type the finding is reported as in TLS-RPT;
    `reason_code` is its `failure-reason-code` (e.g. ``X509_V_ERR_CERT_HAS_EXPIRED``).
    `evidence` longer than `MAX_EVIDENCE` is cut on construction (`bounded_evidence`).
    """

    kind: FindingKind
    evidence: str
    result_type: str = STARTTLS_NOT_SUPPORTED
    expected: str = ""
    reason_code: str = ""

    def __post_init__(self) -> None:
        if len(self.evidence) > MAX_EVIDENCE:
            object.__setattr__(self, "evidence", bounded_evidence(self.evidence))

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
