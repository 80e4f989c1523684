"""Judge the reply to STARTTLS (TLS-02) and bytes that arrived before the handshake (TLS-04)."""

from __future__ import annotations

from detect.model import VALIDATION_FAILURE, Finding, FindingKind

_REJECT_CODES = frozenset({454, 501})
_SHOWN_BYTES = 64


def judge_starttls_reply(code: int, text: str) -> Finding | None:
    """None for ``220`` (go ahead). 454 and 501 are the RFC 3207 refusals; any other code, or
    garbage, is a bad reply. Either way the session must not pretend TLS happened."""
    if code == 220:
        return None
    evidence = f"{code} {text}".strip()
    rejected = code in _REJECT_CODES
    kind = FindingKind.STARTTLS_REJECTED if rejected else FindingKind.STARTTLS_BAD_REPLY
    return Finding(kind, evidence=evidence, expected="220 ready to start TLS")


def judge_pre_handshake_bytes(data: bytes) -> Finding | None:
    """Bytes left in the receive buffer after the 220 and before the handshake were injected by
    someone in the path (RFC 3207 section 4.2 / CVE-2011-0411 class): the TLS attempt is void."""
    if not data:
        return None
    shown = repr(data[:_SHOWN_BYTES])  # at most 4 characters a byte: within MAX_EVIDENCE
    if len(data) > _SHOWN_BYTES:
        shown += f" (+{len(data) - _SHOWN_BYTES} bytes)"
    return Finding(
        FindingKind.PLAINTEXT_INJECTION,
        evidence=shown,
        result_type=VALIDATION_FAILURE,
        expected="nothing between the 220 and the TLS handshake",
        reason_code="plaintext-injection",
    )
