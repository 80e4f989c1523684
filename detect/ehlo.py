"""Judge a banner and an EHLO reply: STARTTLS offered, stripped, garbled, or masked.

The garbling rule (TLS-05). Middleboxes that "inspect" ESMTP (Cisco ASA/PIX among them) overwrite
the STARTTLS keyword in place, so the reply keeps its length: ``XXXXXXXA`` is the form seen in the
wild. A keyword is a *garbled STARTTLS* when STARTTLS itself is absent and the keyword

1. is exactly 8 characters long (the length of ``STARTTLS``), and
2. is masked junk of that shape: either at least 6 of its characters are masking characters
   (``X * # ?``), or it has at least one masking character and every other character equals the
   letter of ``STARTTLS`` at the same position (``STARTXXX``, ``XXXXTTLS``, ``S*A*T*L*``).

Why this cannot hit real extensions: every legitimate keyword that begins with ``X`` (``XFORWARD``,
``XCLIENT``, ``XEXCH50``, ``X-EXPS``, ``X-LINK2STATE``, ``XSHADOW``, ``XRCPTFORWARD``, ...) has one
or two masking characters and spells a word, never STARTTLS's letters in STARTTLS's positions; the
8-character ones (``XFORWARD``, ``XMSGPRIO``) fail both tests. ``XXXA`` (a masked ``AUTH``) is not
STARTTLS's length. More in ``detect/README.md``.
The rule only fires when STARTTLS is missing, which is exactly when the garbling did harm.

Runs of ``*`` (four or more) in the banner or an EHLO line, and EHLO words made only of ``X`` (four
or more), are *masked reply* evidence: an inspecting device rewrote what the server said.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from detect.model import EhloJudgement, Finding, FindingKind

STARTTLS = "STARTTLS"
MASK_CHARS = frozenset("X*#?")
_STAR_RUN = re.compile(r"\*{4,}")
_NAME_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_ADDRESS_LITERAL = re.compile(r"^\[[^\[\]\s]+\]$")
# ESMTP keywords are ASCII (RFC 5321 4.1.1.1): fold case in ASCII only. str.upper() turns
# U+00DF (sharp s) into "SS", so a 7-character word gains STARTTLS's length, and U+017F (long s)
# into "S", so junk would pass as an offer of STARTTLS.
_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


def _upper(text: str) -> str:
    return text.translate(_ASCII_UPPER)


def _verb(line: str) -> str:
    """The keyword of one EHLO line (``SIZE 1000`` -> ``SIZE``, ``AUTH=LOGIN`` -> ``AUTH``)."""
    word = line.strip().split(" ", 1)[0] if line.strip() else ""
    return _upper(word.split("=", 1)[0])


def is_garbled_starttls(keyword: str) -> bool:
    """True when `keyword` is masked junk in STARTTLS's shape (the rule in the module docstring)."""
    word = _upper(keyword)
    if len(word) != len(STARTTLS) or word == STARTTLS:
        return False
    masked = sum(1 for ch in word if ch in MASK_CHARS)
    if masked >= 6:
        return True
    pairs = zip(word, STARTTLS, strict=True)
    same_shape = all(ch in MASK_CHARS or ch == want for ch, want in pairs)
    return masked >= 1 and same_shape


def _is_masked(text: str) -> bool:
    if _STAR_RUN.search(text):
        return True
    verb = _verb(text)
    return len(verb) >= 4 and set(verb) == {"X"}


def _is_name_label(label: str) -> bool:
    """An LDH label, or a U-label (an SMTPUTF8 server may greet with one, RFC 6531 3.3)."""
    if label.isascii():
        return bool(_NAME_LABEL.match(label))
    return label.replace("-", "").isalnum() and not label.startswith("-")


def greeting_name(text: str) -> str:
    """The server's name at the start of a 220 greeting or a 250 EHLO reply (RFC 5321 4.1.1.1,
    4.2: ``Domain / address-literal``), or "" when the first word is no such name."""
    word = text.strip().split(" ", 1)[0]
    if _ADDRESS_LITERAL.match(word):
        return word
    labels = word.rstrip(".").split(".")
    if not word or not all(_is_name_label(label) for label in labels):
        return ""
    if all(label.isdigit() for label in labels):
        return ""  # "5.5.2" or a bare IP address: not a domain
    return word


def judge_banner(code: int, text: str) -> tuple[Finding, ...]:
    """Findings in the 220 greeting: a masked banner is tampering evidence."""
    if _STAR_RUN.search(text):
        return (
            Finding(
                FindingKind.MASKED_REPLY,
                evidence=f"{code} {text}",
                expected="an unmasked greeting",
            ),
        )
    return ()


def judge_ehlo(code: int, lines: Sequence[str], *, expect_starttls: bool) -> EhloJudgement:
    """Judge an EHLO reply. `lines` are the reply's text lines without codes; the first names the
    server (TLS-01: it is not a keyword). `expect_starttls` is True when the policy or the host's
    history says STARTTLS must be there."""
    # Only a 250 reply names the server; a refusal's first word is its status ("5.5.2").
    server_name = greeting_name(lines[0]) if code == 250 and lines else ""
    if code != 250:
        raw = f"{code} " + " / ".join(lines)
        refused = Finding(
            FindingKind.EHLO_REFUSED,
            evidence=raw,
            expected="250 reply to EHLO",
        )
        return EhloJudgement(False, (), server_name, (refused,))
    keyword_lines = [line for line in lines[1:] if line.strip()]
    keywords = tuple(_verb(line) for line in keyword_lines)
    offers = STARTTLS in keywords
    findings: list[Finding] = []
    if not offers:
        garbled = [line for line in keyword_lines if is_garbled_starttls(_verb(line))]
        for line in garbled:
            findings.append(
                Finding(
                    FindingKind.STARTTLS_GARBLED,
                    evidence=f"250-{line.strip()}",
                    expected=STARTTLS,
                )
            )
        if expect_starttls and not garbled:
            findings.append(
                Finding(
                    FindingKind.STARTTLS_STRIPPED,
                    evidence="EHLO keywords: " + (" ".join(keywords) or "(none)"),
                    expected=STARTTLS,
                )
            )
    masked = [
        line
        for line in lines
        if _is_masked(line) and not (not offers and is_garbled_starttls(_verb(line)))
    ]
    if masked:
        findings.append(
            Finding(
                FindingKind.MASKED_REPLY,
                evidence=" / ".join(masked),
                expected="unmasked EHLO lines",
            )
        )
    return EhloJudgement(offers, keywords, server_name, tuple(findings))
