"""EHLO and banner judging: every attack shape, and no false positives on real servers' replies."""

from __future__ import annotations

import pytest

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
    "postfix-xclient-xforward": [
        "mx.example.org",
        "PIPELINING",
        "SIZE 10240000",
        "ETRN",
        "STARTTLS",
        "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT",
        "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "DSN",
    ],
    "exim": [
        "mx.example.org Hello relay.example.net [192.0.2.1]",
        "SIZE 52428800",
        "8BITMIME",
        "PIPELINING",
        "PIPE_CONNECT",
        "AUTH PLAIN LOGIN",
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
    "exchange-on-premise": [
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
        "XEXCH50",
        "XPROXYFROM",
        "XRCPTFORWARD",
        "XMSGPRIO",
        "XOORG",
    ],
    "exchange2003": [
        "EXCH03.corp.example.org Hello [192.0.2.1]",
        "TURN",
        "ATRN",
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
        "SIZE",
        "DSN",
        "ETRN",
        "AUTH DIGEST-MD5 CRAM-MD5",
        "DELIVERBY",
        "HELP",
        "STARTTLS",
    ],
    "sendmail-verbose": [
        "mail.example.org Hello relay.example.net [192.0.2.1], pleased to meet you",
        "ENHANCEDSTATUSCODES",
        "PIPELINING",
        "EXPN",
        "VERB",
        "8BITMIME",
        "SIZE 20000000",
        "DSN",
        "ETRN",
        "ONEX",
        "XUSR",
        "DELIVERBY 240",
        "STARTTLS",
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
    "opensmtpd": [
        "mail.example.org Hello relay.example.net [192.0.2.1], pleased to meet you",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SIZE 36700160",
        "DSN",
        "STARTTLS",
        "HELP",
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
        "SMTPUTF8",
        "CHUNKING",
    ],
    "courier": [
        "mail.example.org Ok.",
        "XVERP=Courier",
        "XEXDATA",
        "XSECURITY=NONE,STARTTLS",
        "PIPELINING",
        "8BITMIME",
        "SIZE",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ],
    "haraka": [
        "mx.example.org Hello relay.example.net [192.0.2.1], Haraka is at your service.",
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE 0",
        "STARTTLS",
        "AUTH PLAIN LOGIN",
    ],
    "mixed-case": [
        "Mx.Example.Org",
        "Pipelining",
        "size 1000",
        "8bitMime",
        "StartTls",
        "enhancedStatusCodes",
        "xForward NAME ADDR",
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


def _kinds(code: int, lines: list[str], *, expect: bool) -> list[FindingKind]:
    return [f.kind for f in judge_ehlo(code, lines, expect_starttls=expect).findings]


# --- the false-positive table: real servers' replies, their vendor X-extensions included ---------


@pytest.mark.parametrize("server", sorted(REAL_SERVERS))
@pytest.mark.parametrize("expect", [True, False])
def test_tls05_real_servers_with_starttls_give_no_finding(server: str, expect: bool) -> None:
    lines = REAL_SERVERS[server]
    judged = judge_ehlo(250, lines, expect_starttls=expect)
    assert judged.offers_starttls
    assert judged.findings == ()
    assert len(judged.keywords) == len(lines) - 1
    assert judged.server_name == lines[0].split(" ", 1)[0]


@pytest.mark.parametrize("server", sorted(REAL_SERVERS))
def test_tls05_real_servers_without_starttls_only_stripped(server: str) -> None:
    lines = [x for x in REAL_SERVERS[server] if x.upper() != "STARTTLS"]
    expected = judge_ehlo(250, lines, expect_starttls=True)
    assert not expected.offers_starttls
    assert [f.kind for f in expected.findings] == [FindingKind.STARTTLS_STRIPPED]
    assert expected.findings[0].result_type == STARTTLS_NOT_SUPPORTED
    assert expected.findings[0].expected == "STARTTLS"
    # A server that never offered it and was not expected to: nothing to say.
    assert judge_ehlo(250, lines, expect_starttls=False).findings == ()


@pytest.mark.parametrize("server", sorted(REAL_SERVERS))
def test_tls05_no_real_keyword_is_garbled(server: str) -> None:
    for line in REAL_SERVERS[server]:
        assert not is_garbled_starttls(line.split(" ", 1)[0].split("=", 1)[0]), line


# --- TLS-01: keywords case-insensitive, the first line is the server's name ----------------------


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


@pytest.mark.parametrize("keyword", ["starttls", "StartTLS", "STARTtls", "sTaRtTlS", "STARTTLS"])
def test_tls01_starttls_in_any_case_is_an_offer(keyword: str) -> None:
    judged = judge_ehlo(250, ["mx.example.org", "PIPELINING", keyword], expect_starttls=True)
    assert judged.offers_starttls
    assert judged.findings == ()


@pytest.mark.parametrize(
    "keyword",
    ["\u017fTARTTLS", "STARTTL\u017f", "\uff33\uff34\uff21\uff32\uff34\uff34\uff2c\uff33"],
)
def test_tls01_case_folding_is_ascii_only(keyword: str) -> None:
    """str.upper() makes U+017F (long s) an "S": such junk is no STARTTLS offer."""
    judged = judge_ehlo(250, ["mx.example.org", keyword], expect_starttls=True)
    assert not judged.offers_starttls
    assert [f.kind for f in judged.findings] == [FindingKind.STARTTLS_STRIPPED]


@pytest.mark.parametrize(
    "name",
    ["XXX.example", "XXXXXXXA.example.org", "xxxxxxxa", "STARTXXX", "XXXXTTLS.example"],
)
def test_tls01_server_names_with_xs_are_not_keywords(name: str) -> None:
    lines = [f"{name} Hello [192.0.2.1]", "SIZE 1000", "STARTTLS"]
    with_tls = judge_ehlo(250, lines, expect_starttls=True)
    assert with_tls.server_name == name
    assert with_tls.findings == ()
    without = judge_ehlo(250, [name, "SIZE 1000"], expect_starttls=False)
    assert without.findings == ()
    assert without.keywords == ("SIZE",)


# --- TLS-05: garbled STARTTLS ------------------------------------------------------------------

GARBLED = [
    "XXXXXXXA",
    "XXXXXXXX",
    "xxxxxxxa",
    "XxXxXxXa",
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
    assert is_garbled_starttls(keyword)
    assert not judged.offers_starttls
    kinds = [f.kind for f in judged.findings]
    assert kinds == [FindingKind.STARTTLS_GARBLED]  # whether or not TLS was expected; not stripped
    garbled = judged.findings[0]
    assert garbled.evidence == f"250-{keyword}"
    assert garbled.expected == "STARTTLS"
    assert garbled.result_type == STARTTLS_NOT_SUPPORTED


@pytest.mark.parametrize("keyword", GARBLED)
def test_tls05_garbled_next_to_a_real_starttls_is_no_finding(keyword: str) -> None:
    """The rule only fires when STARTTLS is missing: with STARTTLS there, nothing was harmed."""
    lines = ["mx.example.org", "STARTTLS", keyword]
    assert FindingKind.STARTTLS_GARBLED not in _kinds(250, lines, expect=True)


@pytest.mark.parametrize("server", sorted(REAL_SERVERS))
def test_tls05_garbled_in_a_real_servers_reply(server: str) -> None:
    """What a PIX/ASA does to a real reply: STARTTLS overwritten in place with XXXXXXXA."""
    lines = ["XXXXXXXA" if x.upper() == "STARTTLS" else x for x in REAL_SERVERS[server]]
    assert _kinds(250, lines, expect=True) == [FindingKind.STARTTLS_GARBLED]
    assert _kinds(250, lines, expect=False) == [FindingKind.STARTTLS_GARBLED]


NOT_GARBLED = [
    "STARTTLS",
    "starttls",
    "XFORWARD",
    "XCLIENT",
    "XEXCH50",
    "X-EXPS",
    "X-ANONYMOUSTLS",
    "X-LINK2STATE",
    "XSHADOW",
    "XSHADOWREQUEST",
    "XRDST",
    "XXXA",
    "XOORG",
    "XVERP",
    "XEXDATA",
    "XSECURITY",
    "XLOOP",
    "XMSGPRIO",
    "XUSR",
    "PIPELINING",
    "8BITMIME",
    "SMTPUTF8",
    "CHUNKING",
    "DELIVERBY",
    "XXXXXXX",
    "XXXXXXXXX",
    "XXXXXXß",  # str.upper() would make it 8 characters
    "SIZE",
    "",
]


@pytest.mark.parametrize("keyword", NOT_GARBLED)
def test_tls05_legitimate_keywords_are_not_garbled(keyword: str) -> None:
    assert not is_garbled_starttls(keyword)


# --- the HELO downgrade and masked replies -----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (502, "5.5.2 Error: command not recognized"),
        (500, "5.5.1 Command unrecognized"),
        (554, "5.7.1 Access denied"),
        (421, "4.3.2 Service shutting down"),
    ],
)
@pytest.mark.parametrize("expect", [True, False])
def test_tls07_ehlo_refused_is_the_helo_downgrade(code: int, text: str, expect: bool) -> None:
    judged = judge_ehlo(code, [text], expect_starttls=expect)
    assert not judged.offers_starttls
    assert judged.keywords == ()
    [finding] = judged.findings
    assert finding.kind is FindingKind.EHLO_REFUSED
    assert finding.evidence == f"{code} {text}"
    assert finding.result_type == STARTTLS_NOT_SUPPORTED
    # Even STARTTLS in the text of a refusal is no offer.
    assert not judge_ehlo(code, ["mx", "STARTTLS"], expect_starttls=expect).offers_starttls


@pytest.mark.parametrize(
    ("lines", "offers", "evidence"),
    [
        (["mx.example.org", "XXXX", "STARTTLS"], True, "XXXX"),
        (["mx.example.org", "XXXXXXXXXXXX", "STARTTLS"], True, "XXXXXXXXXXXX"),
        (["**********", "STARTTLS"], True, "**********"),
        (["mx.example.org", "SIZE ****", "STARTTLS"], True, "SIZE ****"),
        (["mx.example.org", "AUTH ********"], False, "AUTH ********"),
    ],
)
def test_masked_ehlo_lines(lines: list[str], offers: bool, evidence: str) -> None:
    judged = judge_ehlo(250, lines, expect_starttls=False)
    assert judged.offers_starttls is offers
    [finding] = judged.findings
    assert finding.kind is FindingKind.MASKED_REPLY
    assert finding.evidence == evidence
    assert finding.result_type == STARTTLS_NOT_SUPPORTED


def test_masked_and_garbled_are_one_finding_each() -> None:
    """An all-X keyword of STARTTLS's length is the garbled finding, not also a masked one."""
    lines = ["mx.example.org", "XXXXXXXX", "XXXX"]
    assert _kinds(250, lines, expect=True) == [
        FindingKind.STARTTLS_GARBLED,
        FindingKind.MASKED_REPLY,
    ]


@pytest.mark.parametrize(
    "text",
    [
        "*************************************",
        "****",
        "mx.example.org ESMTP ********** ready",
        "************************************************ 2.0.0 ***** ****",
    ],
)
def test_masked_banner(text: str) -> None:
    [finding] = judge_banner(220, text)
    assert finding.kind is FindingKind.MASKED_REPLY
    assert finding.evidence == f"220 {text}"
    assert finding.result_type == STARTTLS_NOT_SUPPORTED


@pytest.mark.parametrize(
    "text",
    [
        "mx.example.org ESMTP Postfix",
        "mx ESMTP *** ready",
        "XXX.example ESMTP Exim 4.96 Mon, 01 Jan 2024 00:00:00 +0000",
        "mx.google.com ESMTP a1-20020a05600c000000b00000000000000si0000000wmq.0 - gsmtp",
        "EX01.corp.example.org Microsoft ESMTP MAIL Service ready at Mon, 1 Jan 2024 00:00:00",
        "",
    ],
)
def test_real_banners_are_not_masked(text: str) -> None:
    assert judge_banner(220, text) == ()


def test_every_attack_shape_in_one_table() -> None:
    """strip, garble, mask, EHLO 502: what the lab attacker produces, judged as the relay does."""
    table = [
        (250, ["mx", "PIPELINING", "SIZE 1000"], True, [FindingKind.STARTTLS_STRIPPED]),
        (250, ["mx", "PIPELINING", "SIZE 1000"], False, []),
        (250, ["mx", "PIPELINING", "XXXXXXXA"], False, [FindingKind.STARTTLS_GARBLED]),
        (250, ["mx", "PIPELINING", "XXXXXXXA"], True, [FindingKind.STARTTLS_GARBLED]),
        (250, ["mx", "PIPELINING", "xxxxxxxa"], True, [FindingKind.STARTTLS_GARBLED]),
        (250, ["mx", "PIPELINING", "S*A*T*L*"], True, [FindingKind.STARTTLS_GARBLED]),
        (250, ["mx", "XXXX", "STARTTLS"], True, [FindingKind.MASKED_REPLY]),
        (502, ["5.5.2 Error: command not recognized"], True, [FindingKind.EHLO_REFUSED]),
        (500, ["5.5.1 what"], False, [FindingKind.EHLO_REFUSED]),
        (554, ["5.7.1 no"], True, [FindingKind.EHLO_REFUSED]),
        (250, ["mx", "PIPELINING", "STARTTLS"], True, []),
    ]
    for code, lines, expect, kinds in table:
        assert _kinds(code, lines, expect=expect) == kinds, (code, lines, expect)
