"""EHLO and banner judging: every attack shape, and no false positives on real servers' replies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detect.ehlo import is_garbled_starttls, judge_banner, judge_ehlo
from detect.model import STARTTLS_NOT_SUPPORTED, FindingKind

# EHLO replies (text lines without codes) shaped like those real servers send, STARTTLS included.
REAL_SERVERS: dict[str, list[str]] = {
    "postfix": [
        "mail.example.org",
        "PIPELINING",
        "SIZE 10240000",
        "VRFY",
        "ETRN",
        "STARTTLS",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "DSN",
        "SMTPUTF8",
        "CHUNKING",
    ],
    "exim": [
        "mx.example.org Hello relay.example.net [192.0.2.1]",
        "SIZE 52428800",
        "8BITMIME",
        "PIPELINING",
        "PIPE_CONNECT",
        "CHUNKING",
        "STARTTLS",
        "PRDR",
        "HELP",
    ],
    "office365": [
        "AM0PR01MB1234.eurprd01.prod.exchangelabs.com Hello [192.0.2.1]",
        "SIZE 157286400",
        "PIPELINING",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "8BITMIME",
        "BINARYMIME",
        "CHUNKING",
        "SMTPUTF8",
    ],
    "exchange2013": [
        "EX01.corp.example.org Hello [192.0.2.1]",
        "SIZE 37748736",
        "PIPELINING",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "X-ANONYMOUSTLS",
        "AUTH NTLM",
        "X-EXPS GSSAPI NTLM",
        "8BITMIME",
        "BINARYMIME",
        "CHUNKING",
        "XRDST",
        "XSHADOWREQUEST",
        "XPROXYFROM",
        "XRCPTFORWARD",
        "XMSGPRIO",
        "XOORG",
    ],
    "exchange2003": [
        "EXCH03.corp.example.org Hello [192.0.2.1]",
        "TURN",
        "SIZE",
        "ETRN",
        "PIPELINING",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "8bitmime",
        "BINARYMIME",
        "CHUNKING",
        "VRFY",
        "X-EXPS GSSAPI NTLM LOGIN",
        "X-EXPS=LOGIN",
        "AUTH GSSAPI NTLM LOGIN",
        "AUTH=LOGIN",
        "X-LINK2STATE",
        "XEXCH50",
        "STARTTLS",
        "OK",
    ],
    "google": [
        "mx.google.com at your service, [192.0.2.1]",
        "SIZE 157286400",
        "8BITMIME",
        "STARTTLS",
        "ENHANCEDSTATUSCODES",
        "PIPELINING",
        "CHUNKING",
        "SMTPUTF8",
    ],
    "sendmail": [
        "mail.example.org Hello relay.example.net [192.0.2.1], pleased to meet you",
        "ENHANCEDSTATUSCODES",
        "PIPELINING",
        "8BITMIME",
        "SIZE 20000000",
        "DSN",
        "ETRN",
        "AUTH DIGEST-MD5 CRAM-MD5",
        "DELIVERBY",
        "STARTTLS",
        "VERB",
        "ONEX",
        "EXPN",
        "HELP",
    ],
    "qmail": [
        "mail.example.org",
        "STARTTLS",
        "PIPELINING",
        "8BITMIME",
        "SIZE 0",
        "AUTH LOGIN PLAIN CRAM-MD5",
    ],
    "zimbra": [
        "zimbra.example.org",
        "PIPELINING",
        "SIZE 10240000",
        "ETRN",
        "STARTTLS",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "DSN",
        "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN",
        "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT",
    ],
    "opensmtpd": [
        "mail.example.org Hello relay.example.net [192.0.2.1], pleased to meet you",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SIZE 36700160",
        "DSN",
        "STARTTLS",
        "HELP",
    ],
    "assorted-vendor-extensions": [
        "mx.example.org",
        "XVERP",
        "XADR",
        "XSTA",
        "XCIR",
        "XGEN",
        "XLOOP 0123456789ABCDEF",
        "X-RCPTLIMIT 100",
        "XSHADOW",
        "XXXA",
        "REQUIRETLS",
        "LIMITS RCPTMAX=100 MAILMAX=10",
        "MT-PRIORITY MIXER",
        "BURL imap",
        "ATRN",
        "SMTPUTF8",
        "DELIVERBY 240",
        "AUTH=LOGIN PLAIN",
        "XFORWARD NAME ADDR",
        "starttls",
    ],
}


@pytest.mark.parametrize("server", sorted(REAL_SERVERS))
@pytest.mark.parametrize("expect", [True, False])
def test_real_servers_with_starttls_give_no_finding(server: str, expect: bool) -> None:
    lines = REAL_SERVERS[server]
    judged = judge_ehlo(250, lines, expect_starttls=expect)
    assert judged.offers_starttls
    assert judged.findings == ()
    assert len(judged.keywords) == len(lines) - 1
    assert judged.server_name == lines[0].split(" ", 1)[0]


@pytest.mark.parametrize("server", sorted(REAL_SERVERS))
def test_real_servers_without_starttls_only_stripped(server: str) -> None:
    lines = [x for x in REAL_SERVERS[server] if x.upper() != "STARTTLS"]
    expected = judge_ehlo(250, lines, expect_starttls=True)
    assert not expected.offers_starttls
    assert [f.kind for f in expected.findings] == [FindingKind.STARTTLS_STRIPPED]
    assert expected.findings[0].result_type == STARTTLS_NOT_SUPPORTED
    assert expected.findings[0].expected == "STARTTLS"
    # A server that never offered it and was not expected to: nothing to say.
    assert judge_ehlo(250, lines, expect_starttls=False).findings == ()


def test_tls01_keywords_are_case_insensitive_and_first_line_is_the_name() -> None:
    judged = judge_ehlo(250, ["StartTLS.example.org", "size 100", "sTaRtTlS"], expect_starttls=True)
    assert judged.offers_starttls
    assert judged.keywords == ("SIZE", "STARTTLS")
    assert judged.server_name == "StartTLS.example.org"
    assert judged.findings == ()
    # A server NAMED starttls does not offer it: the first line is never a keyword.
    named = judge_ehlo(250, ["STARTTLS", "SIZE 100"], expect_starttls=True)
    assert not named.offers_starttls
    assert [f.kind for f in named.findings] == [FindingKind.STARTTLS_STRIPPED]
    # A parameter that merely mentions STARTTLS is no offer either.
    assert not judge_ehlo(250, ["mx", "X-NOTE STARTTLS"], expect_starttls=False).offers_starttls


GARBLED = [
    "XXXXXXXA",
    "XXXXXXXX",
    "xxxxxxxa",
    "XXXXTTLS",
    "STARTXXX",
    "S*A*T*L*",
    "********",
    "STAR*TLS",
    "####TTLS",
    "??ARTTLS",
    "XXXXXXAB",
]


@pytest.mark.parametrize("keyword", GARBLED)
@pytest.mark.parametrize("expect", [True, False])
def test_tls05_garbled_starttls(keyword: str, expect: bool) -> None:
    lines = ["mx.example.org", "PIPELINING", keyword, "8BITMIME"]
    judged = judge_ehlo(250, lines, expect_starttls=expect)
    assert not judged.offers_starttls
    kinds = [f.kind for f in judged.findings]
    assert FindingKind.STARTTLS_GARBLED in kinds  # whether or not TLS was expected
    assert FindingKind.STARTTLS_STRIPPED not in kinds  # one finding for one tampering
    garbled = judged.findings[kinds.index(FindingKind.STARTTLS_GARBLED)]
    assert garbled.evidence == f"250-{keyword}"
    assert garbled.expected == "STARTTLS"
    assert garbled.result_type == STARTTLS_NOT_SUPPORTED


NOT_GARBLED = [
    "STARTTLS",
    "XFORWARD",
    "XCLIENT",
    "XEXCH50",
    "X-EXPS",
    "XSHADOW",
    "XRDST",
    "XXXA",
    "XOORG",
    "XVERP",
    "XLOOP",
    "XMSGPRIO",
    "PIPELINING",
    "8BITMIME",
    "SMTPUTF8",
    "CHUNKING",
    "DELIVERBY",
    "XXXXXXX",
    "XXXXXXXXX",
    "SIZE",
    "",
]


@pytest.mark.parametrize("keyword", NOT_GARBLED)
def test_tls05_legitimate_keywords_are_not_garbled(keyword: str) -> None:
    assert not is_garbled_starttls(keyword)


def test_ehlo_refused_is_the_helo_downgrade() -> None:
    judged = judge_ehlo(502, ["5.5.2 Error: command not recognized"], expect_starttls=False)
    assert not judged.offers_starttls
    [finding] = judged.findings
    assert finding.kind is FindingKind.EHLO_REFUSED
    assert finding.evidence == "502 5.5.2 Error: command not recognized"
    assert finding.result_type == STARTTLS_NOT_SUPPORTED


def test_masked_ehlo_lines() -> None:
    judged = judge_ehlo(250, ["mx.example.org", "XXXX", "STARTTLS"], expect_starttls=True)
    assert judged.offers_starttls
    assert [f.kind for f in judged.findings] == [FindingKind.MASKED_REPLY]
    assert judged.findings[0].evidence == "XXXX"
    starred = judge_ehlo(250, ["**********", "STARTTLS"], expect_starttls=True)
    assert [f.kind for f in starred.findings] == [FindingKind.MASKED_REPLY]


def test_masked_banner() -> None:
    [finding] = judge_banner(220, "*************************************")
    assert finding.kind is FindingKind.MASKED_REPLY
    assert finding.evidence.startswith("220 ****")
    assert judge_banner(220, "mx.example.org ESMTP Postfix") == ()
    assert judge_banner(220, "mx ESMTP *** ready") == ()


def test_every_attack_shape_in_one_table() -> None:
    """strip, garble, EHLO 502: what the lab attacker produces, judged as the relay judges it."""
    table = [
        (250, ["mx", "PIPELINING", "SIZE 1000"], True, [FindingKind.STARTTLS_STRIPPED]),
        (250, ["mx", "PIPELINING", "XXXXXXXA"], False, [FindingKind.STARTTLS_GARBLED]),
        (250, ["mx", "PIPELINING", "XXXXXXXA"], True, [FindingKind.STARTTLS_GARBLED]),
        (502, ["5.5.2 Error: command not recognized"], True, [FindingKind.EHLO_REFUSED]),
        (500, ["5.5.1 what"], False, [FindingKind.EHLO_REFUSED]),
        (250, ["mx", "PIPELINING", "STARTTLS"], True, []),
    ]
    for code, lines, expect, kinds in table:
        assert [f.kind for f in judge_ehlo(code, lines, expect_starttls=expect).findings] == kinds


TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=200)
@given(code=st.integers(-1000, 1000), lines=st.lists(TEXT, max_size=12), expect=st.booleans())
def test_property_any_ehlo_reply_is_judged(code: int, lines: list[str], expect: bool) -> None:
    judged = judge_ehlo(code, lines, expect_starttls=expect)
    assert judged.offers_starttls == (code == 250 and "STARTTLS" in judged.keywords)
    for finding in judged.findings:
        assert len(finding.evidence) <= 300
    if code == 250 and judged.offers_starttls:
        assert FindingKind.STARTTLS_STRIPPED not in [f.kind for f in judged.findings]


@settings(max_examples=200)
@given(code=st.integers(-1000, 1000), text=st.text(max_size=200))
def test_property_any_banner_is_judged(code: int, text: str) -> None:
    for finding in judge_banner(code, text):
        assert finding.kind is FindingKind.MASKED_REPLY


@settings(max_examples=200)
@given(keyword=st.text(alphabet="STARLXx*#?-0123456789", min_size=0, max_size=10))
def test_property_garbled_only_in_starttls_shape(keyword: str) -> None:
    if is_garbled_starttls(keyword):
        assert len(keyword) == 8
        assert keyword.upper() != "STARTTLS"
        assert any(ch in "X*#?" for ch in keyword.upper())
