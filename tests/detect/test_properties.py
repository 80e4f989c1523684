"""Properties of the pure judges: whatever a peer or a middlebox sends, they answer, never raise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from detect.ehlo import MASK_CHARS, STARTTLS, is_garbled_starttls, judge_banner, judge_ehlo
from detect.model import FindingKind
from detect.starttls import judge_pre_handshake_bytes, judge_starttls_reply

CODES = st.integers(-(10**6), 10**6)
SMTP_CODES = st.sampled_from([250, 220, 421, 500, 501, 502, 554]) | CODES
ANY_TEXT = st.text(max_size=60)
# Lines that look like EHLO lines: keywords from STARTTLS's letters, masks and vendor prefixes.
KEYWORDISH = st.text(alphabet="STARLXx*#?-=0123456789 ", max_size=14)
LINES = st.lists(ANY_TEXT | KEYWORDISH, max_size=12)


@settings(max_examples=200)
@given(code=SMTP_CODES, lines=LINES, expect=st.booleans())
def test_property_any_ehlo_reply_is_judged(code: int, lines: list[str], expect: bool) -> None:
    judged = judge_ehlo(code, lines, expect_starttls=expect)
    kinds = [f.kind for f in judged.findings]
    assert judged.offers_starttls == (code == 250 and STARTTLS in judged.keywords)
    assert all(len(f.evidence) <= 300 for f in judged.findings)
    if code != 250:
        assert kinds == [FindingKind.EHLO_REFUSED]
    if not expect:
        assert FindingKind.STARTTLS_STRIPPED not in kinds
    # One tampering, one finding: never both stripped and garbled.
    assert not {FindingKind.STARTTLS_STRIPPED, FindingKind.STARTTLS_GARBLED} <= set(kinds)


@settings(max_examples=200)
@given(
    before=LINES,
    after=LINES,
    starttls=st.sampled_from(["STARTTLS", "starttls", "StartTLS", "STARTTLS extra"]),
    expect=st.booleans(),
)
def test_property_starttls_present_is_never_garbled(
    before: list[str], after: list[str], starttls: str, expect: bool
) -> None:
    lines = ["mx.example.org", *before, starttls, *after]
    judged = judge_ehlo(250, lines, expect_starttls=expect)
    assert judged.offers_starttls
    kinds = [f.kind for f in judged.findings]
    assert FindingKind.STARTTLS_GARBLED not in kinds
    assert FindingKind.STARTTLS_STRIPPED not in kinds


@settings(max_examples=200)
@given(code=CODES, text=st.text(max_size=400))
def test_property_any_banner_is_judged(code: int, text: str) -> None:
    findings = judge_banner(code, text)
    assert all(f.kind is FindingKind.MASKED_REPLY for f in findings)
    assert bool(findings) == ("****" in text)


@settings(max_examples=200)
@given(keyword=st.text(max_size=20) | st.text(alphabet="STARLXx\u00df*#?-\u017f", max_size=10))
def test_property_garbled_only_at_starttls_length(keyword: str) -> None:
    if len(keyword) != len(STARTTLS):
        assert not is_garbled_starttls(keyword)
    if is_garbled_starttls(keyword):
        assert keyword.upper() != STARTTLS
        assert any(ch in MASK_CHARS for ch in keyword.upper())


@settings(max_examples=200)
@given(keyword=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWYZ0123456789-", min_size=1, max_size=20))
def test_property_keywords_without_a_mask_are_never_garbled(keyword: str) -> None:
    """No X, *, # or ?: a real word, whatever its length (the vendor-extension guarantee)."""
    assert not is_garbled_starttls(keyword)
    assert not is_garbled_starttls(keyword.lower())


@settings(max_examples=200)
@given(rest=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWYZ0123456789-", min_size=7, max_size=7))
def test_property_one_leading_x_is_garbled_only_in_starttls_letters(rest: str) -> None:
    """`X` + 7 letters (XFORWARD, XMSGPRIO): garbled only if the 7 are STARTTLS's own."""
    assert is_garbled_starttls("X" + rest) == (rest == STARTTLS[1:])


@settings(max_examples=200)
@given(code=CODES, text=st.text(max_size=500))
def test_property_any_starttls_reply_is_judged(code: int, text: str) -> None:
    finding = judge_starttls_reply(code, text)
    assert (finding is None) == (code == 220)
    if finding is not None:
        rejected = code in (454, 501)
        assert (finding.kind is FindingKind.STARTTLS_REJECTED) == rejected
        assert len(finding.evidence) <= 300


@settings(max_examples=200)
@given(data=st.binary(max_size=2000))
def test_property_any_buffer_is_judged(data: bytes) -> None:
    finding = judge_pre_handshake_bytes(data)
    assert (finding is None) == (not data)
    if finding is not None:
        assert finding.kind is FindingKind.PLAINTEXT_INJECTION
        assert finding.evidence.startswith(repr(data[:200]))
