"""Evidence comes from the peer: it is cut to MAX_EVIDENCE characters, with its length noted."""

from __future__ import annotations

from detect.ehlo import judge_ehlo
from detect.model import MAX_EVIDENCE, Finding, FindingKind, bounded_evidence


def test_a_huge_ehlo_reply_gives_bounded_stripped_evidence_with_its_length() -> None:
    keywords = [f"X-KEYWORD-{n:05d}" for n in range(1810)]
    judged = judge_ehlo(250, ["mx.example", *keywords], expect_starttls=True)
    (finding,) = (f for f in judged.findings if f.kind is FindingKind.STARTTLS_STRIPPED)
    full = "EHLO keywords: " + " ".join(keywords)
    assert len(full) > 28_000
    assert len(finding.evidence) <= MAX_EVIDENCE
    assert finding.evidence.startswith("EHLO keywords: X-KEYWORD-00000 ")
    assert finding.evidence.endswith(f"...[{len(full)} characters in all]")
    assert finding.as_log()["evidence"] == finding.evidence


def test_short_evidence_is_kept_as_it_is() -> None:
    text = "x" * MAX_EVIDENCE
    assert bounded_evidence(text) == text
    assert Finding(FindingKind.STARTTLS_STRIPPED, evidence=text).evidence == text
    cut = Finding(FindingKind.STARTTLS_STRIPPED, evidence=text + "y").evidence
    assert len(cut) == MAX_EVIDENCE
    assert cut.endswith(f"...[{MAX_EVIDENCE + 1} characters in all]")
