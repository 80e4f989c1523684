"""SM-02, SM-03: the socketmap answer table (pure), and the `tlsrpt` dialect read back with
Postfix's own attribute grammar (`smtp_tls_policy.c`)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtasts.errors import PolicyError
from mtasts.model import PolicyFailure, PolicyResult, PolicySource
from mtasts.parse import parse_policy
from relay.socketmap.answer import DaneState, MapFacts, answer, map_domain
from relay.socketmap.protocol import Dialect, Request, parse_request

ENFORCE = (
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\n"
    "max_age: 86400\r\n"
)
TESTING = ENFORCE.replace("enforce", "testing")
NONE = "version: STSv1\nmode: none\nmax_age: 86400\n"


def sts(text: str | None, *, failed: bool = False) -> PolicyResult:
    failure = PolicyFailure("sts-policy-fetch-error", "timed out") if failed else None
    if text is None:
        return PolicyResult("example.com", None, PolicySource.NONE, failure=failure)
    return PolicyResult("example.com", parse_policy(text), PolicySource.CACHED, failure=failure)


SECURE = "OK secure match=mx1.example.com:.example.net servername=hostname"

TABLE = [
    # (facts, postfix reply, kind)
    (MapFacts("example.com", sts(ENFORCE)), SECURE, "secure"),
    # a failed refresh with a cached policy: the cached policy (STS-06)
    (MapFacts("example.com", sts(ENFORCE, failed=True)), SECURE, "secure"),
    (MapFacts("example.com", sts(TESTING)), "NOTFOUND ", "testing"),
    (MapFacts("example.com", sts(NONE)), "NOTFOUND ", "no-policy"),
    (MapFacts("example.com", sts(None)), "NOTFOUND ", "no-policy"),
    (MapFacts("example.com", None), "NOTFOUND ", "no-policy"),
    # RFC 8461 5: a policy that cannot be fetched, nothing cached: as without a policy
    (MapFacts("example.com", sts(None, failed=True)), "NOTFOUND ", "fetch-failed"),
    # DANE first (RFC 8461 2), whatever MTA-STS says
    (MapFacts("example.com", sts(ENFORCE), DaneState.ALL), "OK dane-only", "dane-only"),
    (MapFacts("example.com", sts(ENFORCE), DaneState.SOME), "OK dane", "dane"),
    (MapFacts("example.com", None, DaneState.SOME), "OK dane", "dane"),
    (MapFacts("example.com", sts(ENFORCE), DaneState.NONE), SECURE, "secure"),
    (MapFacts("example.com", sts(ENFORCE), DaneState.OFF), SECURE, "secure"),
    # a DANE look-up that failed: TEMP, never a fall-back to MTA-STS (RFC 7672 2.2)
    (
        MapFacts("example.com", sts(ENFORCE), DaneState.TEMPFAIL, "SERVFAIL"),
        "TEMP DANE look-up failed: SERVFAIL",
        "temp",
    ),
    # local overrides answer as configured
    (MapFacts("example.com", sts(ENFORCE), override="none"), "OK none", "override"),
    (MapFacts("example.com", sts(ENFORCE), override="opportunistic"), "OK may", "override"),
    (MapFacts("example.com", sts(ENFORCE), override="encrypt"), "OK encrypt", "override"),
    (MapFacts("example.com", None, override="verify"), "OK verify", "override"),
    (MapFacts("example.com", None, override="dane-only"), "OK dane-only", "override"),
    (MapFacts("example.com", sts(ENFORCE), override="dane"), SECURE, "secure"),
    (MapFacts("example.com", None, DaneState.ALL, override="dane"), "OK dane-only", "dane-only"),
]


@pytest.mark.parametrize(("facts", "reply", "kind"), TABLE)
def test_sm02_answer_table(facts: MapFacts, reply: str, kind: str) -> None:
    found = answer(facts, Dialect.POSTFIX)
    assert (found.reply, found.kind) == (reply, kind)


@pytest.mark.parametrize(
    ("key", "domain"),
    [
        ("example.com", "example.com"),
        ("Example.COM.", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("[mx.example.com]", None),
        ("[mx.example.com]:587", None),
        ("example.com:2525", None),
        ("192.0.2.1", None),
        ("[192.0.2.1]", None),
        ("[ipv6:2001:db8::1]", None),
        (".example.com", None),  # a parent-domain retry
        ("localhost", None),
        ("", None),
        ("exa mple.com", None),
    ],
)
def test_sm02_only_plain_domains_are_looked_up(key: str, domain: str | None) -> None:
    assert map_domain(key) == domain


def test_sm01_request_is_name_space_key() -> None:
    assert parse_request(b"postfix example.com") == Request("postfix", "example.com")
    assert parse_request(b"tlsrpt ") == Request("tlsrpt", "")


# --- the tlsrpt dialect, read back the way Postfix reads a policy ---------------------------


def postfix_tokens(text: str) -> list[str]:
    """`mystrtokq(&policy, ", \\t\\r\\n", "{}")`: split at commas and white space outside
    balanced braces."""
    tokens: list[str] = []
    level, current = 0, ""
    for ch in text:
        if ch == "{":
            level += 1
        elif ch == "}" and level > 0:
            level -= 1
        if level == 0 and ch in ", \t\r\n":
            if current:
                tokens.append(current)
            current = ""
        else:
            current += ch
    if current:
        tokens.append(current)
    return tokens


def postfix_attributes(reply: str) -> tuple[str, list[tuple[str, str]]]:
    """(level, [(name, value)]) as `tls_policy_lookup_one` gets them: `{ name = value }` is
    stripped of its braces and the white space around name and value (`extpar`), every other
    token is split at its first `=` (`split_nameval`). Anything else is a parse error."""
    assert reply.startswith("OK ")
    level, *rest = postfix_tokens(reply[3:])
    pairs = []
    for token in rest:
        if token.startswith("{"):
            assert token.endswith("}"), f"unbalanced braces: {token!r}"
            inner = token[1:-1]
            assert "{" not in inner, f"nested braces: {token!r}"
            assert "}" not in inner, f"nested braces: {token!r}"
            name, eq, value = inner.partition("=")
            assert eq, f"no '=' in {token!r}"
            pairs.append((name.strip(), " ".join(value.split())))
        else:
            name, eq, value = token.partition("=")
            assert eq, f"not name=value: {token!r}"
            assert name, f"not name=value: {token!r}"
            assert value, f"not name=value: {token!r}"
            pairs.append((name, value))
    return level, pairs


def test_sm03_tlsrpt_enforce_carries_postfix_310_attributes() -> None:
    found = answer(MapFacts("example.com", sts(ENFORCE)), Dialect.TLSRPT)
    level, pairs = postfix_attributes(found.reply)
    assert level == "secure"
    assert pairs == [
        ("match", "mx1.example.com:.example.net"),
        ("servername", "hostname"),
        ("policy_type", "sts"),
        ("policy_domain", "example.com"),
        ("mx_host_pattern", "mx1.example.com"),
        ("mx_host_pattern", "*.example.net"),
        ("policy_string", "version: STSv1"),
        ("policy_string", "mode: enforce"),
        ("policy_string", "mx: mx1.example.com"),
        ("policy_string", "mx: *.example.net"),
        ("policy_string", "max_age: 86400"),
    ]
    assert "policy_failure" not in found.reply  # it would make Postfix fail the delivery


def test_sm03_tlsrpt_testing_is_reported_not_enforced() -> None:
    found = answer(MapFacts("example.com", sts(TESTING)), Dialect.TLSRPT)
    level, pairs = postfix_attributes(found.reply)
    assert level == "may"
    assert ("policy_type", "sts") in pairs
    assert ("policy_string", "mode: testing") in pairs
    assert not any(name in ("match", "servername") for name, _ in pairs)


@pytest.mark.parametrize(
    ("facts", "reply"),
    [
        (MapFacts("example.com", None), "NOTFOUND "),
        (MapFacts("example.com", sts(ENFORCE), DaneState.ALL), "OK dane-only"),
        (MapFacts("example.com", None, override="encrypt"), "OK encrypt"),
    ],
)
def test_sm03_no_tlsrpt_attributes_outside_mta_sts(facts: MapFacts, reply: str) -> None:
    # Postfix: "built-in policy has unexpected attribute policy_type ..." is an error.
    assert answer(facts, Dialect.TLSRPT).reply == reply


def test_sm03_a_policy_line_cannot_inject_attributes() -> None:
    text = ENFORCE + "ext: } policy_type=no-policy-found { x = y\r\nfoo: a{b}c\r\n"
    found = answer(MapFacts("example.com", sts(text)), Dialect.TLSRPT)
    _, pairs = postfix_attributes(found.reply)
    assert [v for n, v in pairs if n == "policy_type"] == ["sts"]
    assert not any(n == "x" for n, _ in pairs)
    assert len(found.refused) == 2
    assert ("policy_string", "mode: enforce") in pairs


_EXT_VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


@given(st.lists(_EXT_VALUE.filter(lambda v: ";" not in v and v), max_size=5))
def test_sm03_any_extension_value_leaves_the_attributes_intact(values: list[str]) -> None:
    text = ENFORCE + "".join(f"ext{i}: {v}\r\n" for i, v in enumerate(values))
    try:
        policy = parse_policy(text)
    except PolicyError:
        return
    result = PolicyResult("example.com", policy, PolicySource.CACHED)
    found = answer(MapFacts("example.com", result), Dialect.TLSRPT)
    _, pairs = postfix_attributes(found.reply)
    names = [n for n, _ in pairs]
    assert names.count("policy_type") == 1
    assert names.count("policy_domain") == 1
    assert set(names) <= {
        "match",
        "servername",
        "policy_type",
        "policy_domain",
        "mx_host_pattern",
        "policy_string",
    }
    strings = [v for n, v in pairs if n == "policy_string"]
    assert len(strings) + len(found.refused) == len(policy.policy_strings)
    assert all(re.fullmatch(r"[\x20-\x7e]+", s) for s in strings)
