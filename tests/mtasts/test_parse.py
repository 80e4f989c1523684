"""STS-01, STS-02, STS-03: TXT record and policy text parsing (pure), table and property tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtasts.errors import POLICY_INVALID, PolicyError, PolicyInvalidError, StsRecordError
from mtasts.model import Mode, StsRecord
from mtasts.parse import (
    MAX_MAX_AGE,
    parse_policy,
    parse_sts_record,
    policy_domain,
    select_sts_record,
)

# --- STS-01: the TXT record ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=STSv1; id=20160831085700Z;", StsRecord("20160831085700Z")),
        ("v=STSv1;id=1", StsRecord("1")),
        ("v=STSv1 ;\tid=abc ; ", StsRecord("abc")),
        ("v=STSv1; id=" + "a" * 32, StsRecord("a" * 32)),
        ("v=STSv1; id=1; id=2", StsRecord("1")),
        ("v=STSv1; ext-1=x; id=9", StsRecord("9", (("ext-1", "x"),))),
        ("v=STSv1; id=9; a.b_c=x:y<z", StsRecord("9", (("a.b_c", "x:y<z"),))),
    ],
)
def test_sts01_record_parses(text: str, expected: StsRecord) -> None:
    assert parse_sts_record(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "v=STSv1",  # no id
        "v=STSv1;",
        "v=STSv1; id=",
        "v=STSv1; id=" + "a" * 33,
        "v=STSv1; id=12-34",
        "v=STSv1; id=1 2",
        "v=stsv1; id=1",  # %s"v=STSv1": case-sensitive
        "V=STSv1; id=1",
        "v=STSv2; id=1",
        " v=STSv1; id=1",
        "v=STSv1; ID=1",  # %s"id=": the id field is missing
        "v=STSv1; id=1;; x=y",
        "v=STSv1; id=1; novalue",
        "v=STSv1; id=1; ext=a=b",
        "v=STSv1; id=1; _ext=a",
        "v=STSv1; id=1; ext=ümlaut",
    ],
)
def test_sts01_record_rejects(text: str) -> None:
    with pytest.raises(StsRecordError) as caught:
        parse_sts_record(text)
    assert caught.value.result_type == POLICY_INVALID


def test_sts01_split_strings_join_without_space() -> None:
    assert select_sts_record([(b"v=STSv1; i", b"d=12", b"34")]) == StsRecord("1234")
    assert select_sts_record([b"v=STSv1; id=5"]) == StsRecord("5")


# --- STS-02: choosing among TXT records ---------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=spf1 -all", "v=STSv1; id=1"], StsRecord("1")),
        (["v=STSv1 ; id=1"], StsRecord("1")),  # sts-field-delim allows WSP before ";"
        ([], None),
        (["v=spf1 -all"], None),
        (["v=STSv1; id=1", "v=STSv1; id=2"], None),  # not exactly one
        (["v=STSv1; id=1", "v=STSv1; id=1"], None),
        (["v=STSv10; id=1"], None),  # does not start with "v=STSv1;"
        (["v=STSv1"], None),
        (["v=STSv1x; id=1", "v=STSv1; id=7"], StsRecord("7")),
    ],
)
def test_sts02_select(records: list[str], expected: StsRecord | None) -> None:
    assert select_sts_record(records) == expected


def test_sts02_the_one_left_must_parse() -> None:
    with pytest.raises(StsRecordError):
        select_sts_record(["v=spf1 -all", "v=STSv1; id=bad!"])


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=60),
            st.binary(max_size=60),
            st.lists(st.binary(max_size=20), max_size=3).map(tuple),
            st.from_regex(r"v=STSv1;[ -~]{0,20}", fullmatch=True),
        ),
        max_size=4,
    )
)
def test_sts02_property_select_never_crashes(
    records: list[str | bytes | tuple[bytes, ...]],
) -> None:
    try:
        result = select_sts_record(records)
    except PolicyError:
        return
    assert result is None or 1 <= len(result.id) <= 32


@settings(max_examples=200)
@given(st.text(max_size=80) | st.from_regex(r"v=STSv1 ?;( ?[a-z]{1,3}=[!-:<>-~]{0,5} ?;?){0,3}"))
def test_sts01_property_record_result_or_policy_error(text: str) -> None:
    try:
        record = parse_sts_record(text)
    except PolicyError as exc:
        result_type = exc.result_type
        assert result_type == POLICY_INVALID
        return
    assert record.id.isalnum()
    assert record.id.isascii()


# --- STS-03: the policy text ----------------------------------------------------------------

GOOD = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n"


def test_sts03_policy_parses_and_keeps_text() -> None:
    policy = parse_policy(GOOD)
    assert policy.mode is Mode.ENFORCE
    assert policy.max_age == 604800
    assert policy.mx == ("mail.example.com", "*.example.net")
    assert policy.text == GOOD
    assert policy.policy_strings == (
        "version: STSv1",
        "mode: enforce",
        "mx: mail.example.com",
        "mx: *.example.net",
        "max_age: 604800",
    )


@pytest.mark.parametrize(
    ("text", "mode", "mx", "max_age"),
    [
        (GOOD.replace("\n", "\r\n"), Mode.ENFORCE, ("mail.example.com", "*.example.net"), 604800),
        ("max_age: 1\r\nmx: A.Example.COM.\nmode: testing\nversion: STSv1", Mode.TESTING,
         ("a.example.com",), 1),
        ("version: STSv1\nmode: none\nmax_age: 86400\n", Mode.NONE, (), 86400),
        ("version:STSv1\nmode:\tenforce  \nmx: m.x\nmax_age: 0000000060\n", Mode.ENFORCE,
         ("m.x",), 60),
        ("version: STSv1\nmode: enforce\nmode: none\nmx: m.x\nmax_age: 5\nmax_age: 9\n",
         Mode.ENFORCE, ("m.x",), 5),
        ("version: STSv1\nmode: testing\nmx: m.x\nmax_age: 5\nfuture-key: any value\n",
         Mode.TESTING, ("m.x",), 5),
        (f"version: STSv1\nmode: testing\nmx: m.x\nmax_age: {MAX_MAX_AGE}\n", Mode.TESTING,
         ("m.x",), MAX_MAX_AGE),
    ],
)  # fmt: skip
def test_sts03_policy_variants(text: str, mode: Mode, mx: tuple[str, ...], max_age: int) -> None:
    policy = parse_policy(text)
    assert (policy.mode, policy.mx, policy.max_age) == (mode, mx, max_age)


def test_sts03_max_age_limit() -> None:
    with pytest.raises(PolicyInvalidError, match="line 4: max_age"):
        parse_policy(f"version: STSv1\nmode: testing\nmx: m.x\nmax_age: {MAX_MAX_AGE + 1}\n")
    with pytest.raises(PolicyInvalidError, match="max_age"):
        parse_policy("version: STSv1\nmode: testing\nmx: m.x\nmax_age: 12345678901\n")
    with pytest.raises(PolicyInvalidError, match="max_age"):
        parse_policy("version: STSv1\nmode: testing\nmx: m.x\nmax_age: -5\n")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("mode: enforce\nmx: m.x\nmax_age: 5\n", "no 'version: STSv1'"),
        ("version: STSv2\nmode: enforce\nmx: m.x\nmax_age: 5\n", "line 1: version"),
        ("version: STSv1\nmx: m.x\nmax_age: 5\n", "no 'mode'"),
        ("version: STSv1\nmode: Enforce\nmx: m.x\nmax_age: 5\n", "line 2: mode"),
        ("version: STSv1\nmode: enforce\nmx: m.x\n", "no 'max_age'"),
        ("version: STSv1\nmode: enforce\nmax_age: 5\n", "no 'mx'"),
        ("version: STSv1\nmode: testing\nmax_age: 5\n", "no 'mx'"),
        ("version: STSv1\nmode: enforce\nmx: mx.bücher.example\nmax_age: 5\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 5\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx: *.*.b\nmax_age: 5\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx: mx.*.b\nmax_age: 5\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx: -a.b\nmax_age: 5\n", "line 3: mx"),
        ("version: STSv1\nmode: enforce\nmx: m.x\nmax_age 5\n", "line 4"),
        (" version: STSv1\nmode: enforce\nmx: m.x\nmax_age: 5\n", "line 1"),
        ("version: STSv1\nmode: enforce\nmx:\nmax_age: 5\n", "line 3"),
    ],
)
def test_sts03_invalid_policies_name_the_line(text: str, words: str) -> None:
    with pytest.raises(PolicyInvalidError) as caught:
        parse_policy(text)
    assert caught.value.result_type == POLICY_INVALID
    assert words in caught.value.message


_LINES = st.sampled_from(
    [
        "version: STSv1",
        "mode: enforce",
        "mode: none",
        "mode: testing",
        "max_age: 86400",
        "max_age: 99999999999",
        "mx: mx.example.com",
        "mx: *.example.com",
        "mx: bad..name",
        "junk",
        "",
        "x-ext: whatever value",
    ]
)


@settings(max_examples=200)
@given(st.lists(_LINES | st.text(max_size=30), max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_sts03_property_policy_result_or_policy_error(lines: list[str], end: str) -> None:
    text = end.join(lines)
    try:
        policy = parse_policy(text)
    except PolicyError as exc:
        result_type = exc.result_type
        assert result_type == POLICY_INVALID
        return
    assert 0 <= policy.max_age <= MAX_MAX_AGE
    assert policy.mx or policy.mode is Mode.NONE
    assert all(p == p.lower() and p.isascii() and not p.endswith(".") for p in policy.mx)


# --- STS-08: the policy domain --------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("Example.ORG.", "example.org"),
        ("sub.example.org", "sub.example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("[192.0.2.1]", None),
        ("[IPv6:2001:db8::1]", None),
        ("192.0.2.1", None),
        ("2001:db8::1", None),
        ("localhost", None),
        ("", None),
        ("bad_name.example", None),
        ("a..b", None),
    ],
)
def test_sts08_policy_domain_is_the_domain_itself(domain: str, expected: str | None) -> None:
    assert policy_domain(domain) == expected


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_sts08_property_policy_domain_never_crashes(text: str) -> None:
    result = policy_domain(text)
    assert result is None or (result.isascii() and result == result.lower())
