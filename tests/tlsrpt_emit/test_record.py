"""RPT-01: the `_smtp._tls` TXT record, parsed, selected and looked up through the lab DNS."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.dns import LabDns
from tests.tlsrpt_emit.sessions import resolver_for
from tlsrpt_emit.errors import TlsRptLookupError, TlsRptRecordError
from tlsrpt_emit.record import (
    TlsRptRecord,
    lookup_tlsrpt_record,
    parse_tlsrpt_record,
    select_tlsrpt_record,
)


@pytest.mark.parametrize(
    ("text", "rua"),
    [
        ("v=TLSRPTv1; rua=mailto:tlsrpt@example.com", ("mailto:tlsrpt@example.com",)),
        ("v=TLSRPTv1;rua=https://reports.example.com/v1", ("https://reports.example.com/v1",)),
        (
            "v=TLSRPTv1; rua=mailto:a@example.com, https://r.example.com/x;",
            ("mailto:a@example.com", "https://r.example.com/x"),
        ),
        (
            "v=TLSRPTv1 ; rua=mailto:a@example.com,https://r.example.com ; ext=1",
            ("mailto:a@example.com", "https://r.example.com"),
        ),
        # a scheme we do not send to is skipped, the others kept
        ("v=TLSRPTv1; rua=ftp://x.example.com,mailto:a@example.com", ("mailto:a@example.com",)),
        # repeated field: the first wins
        (
            "v=TLSRPTv1; rua=mailto:first@example.com; rua=mailto:second@example.com",
            ("mailto:first@example.com",),
        ),
        # "," "!" ";" inside a URI are percent-encoded
        ("v=TLSRPTv1; rua=mailto:a%2Cb%21c%3B@example.com", ("mailto:a%2Cb%21c%3B@example.com",)),
    ],
)
def test_rpt01_parse_valid(text: str, rua: tuple[str, ...]) -> None:
    assert parse_tlsrpt_record(text).rua == rua


def test_rpt01_percent_encoded_mailto_decodes() -> None:
    record = parse_tlsrpt_record("v=TLSRPTv1; rua=mailto:a%2Cb@example.com?subject=x")
    assert record.mailto_addresses == ("a,b@example.com",)
    both = parse_tlsrpt_record("v=TLSRPTv1; rua=mailto:a@example.com,https://r.example.com/p")
    assert both.https_urls == ("https://r.example.com/p",)
    assert both.mailto_addresses == ("a@example.com",)


def test_rpt01_extensions_kept() -> None:
    record = parse_tlsrpt_record("v=TLSRPTv1; rua=mailto:a@example.com; x-ext=yes")
    assert record.extensions == (("x-ext", "yes"),)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v=TLSRPTv1",
        "v=TLSRPTv1;",
        "v=TLSRPTv2; rua=mailto:a@example.com",
        "v=tlsrptv1; rua=mailto:a@example.com",
        "rua=mailto:a@example.com; v=TLSRPTv1",
        "v=TLSRPTv1; rua=",
        "v=TLSRPTv1; rua=mailto:a@example.com,",
        "v=TLSRPTv1; rua=ftp://only.example.com",
        "v=TLSRPTv1; rua=mailto:no-at-sign",
        "v=TLSRPTv1; rua=https:///no-host",
        "v=TLSRPTv1; rua=not a uri",
        "v=TLSRPTv1; rua=mailto:a!b@example.com",
        "v=TLSRPTv1; rua=mailto:a@example.com; bad field",
        "v=TLSRPTv1; rua=mailto:a@example.com; x=has space",
    ],
)
def test_rpt01_parse_invalid(text: str) -> None:
    with pytest.raises(TlsRptRecordError):
        parse_tlsrpt_record(text)


def test_rpt01_select_discards_others_and_needs_exactly_one() -> None:
    good = "v=TLSRPTv1; rua=mailto:a@example.com"
    assert select_tlsrpt_record(["v=spf1 -all", good]) == TlsRptRecord(
        rua=("mailto:a@example.com",)
    )
    assert select_tlsrpt_record([]) is None
    assert select_tlsrpt_record(["v=spf1 -all"]) is None
    assert select_tlsrpt_record([good, "v=TLSRPTv1; rua=mailto:b@example.com"]) is None
    with pytest.raises(TlsRptRecordError):
        select_tlsrpt_record(["v=TLSRPTv1; rua=mailto:broken"])


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_rpt01_parse_any_text_returns_or_raises_record_error(text: str) -> None:
    try:
        record = parse_tlsrpt_record(text)
    except TlsRptRecordError:
        return
    assert record.rua


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["v=TLSRPTv1", ";", " ", "rua=", "mailto:", "https://", "@", ",", "a", "%2C"]
        )
    ).map("".join)
)
def test_rpt01_parse_record_shaped_text(text: str) -> None:
    try:
        record = parse_tlsrpt_record(text)
    except TlsRptRecordError:
        return
    assert all(u.lower().startswith(("mailto:", "https:")) for u in record.rua)


async def test_rpt01_lookup_joins_split_strings(lab_dns: LabDns) -> None:
    lab_dns.add(
        "_smtp._tls.example.org",
        "TXT",
        ("v=TLSRPTv1; rua=mailto:tls", "rpt@example.org"),
    )
    lab_dns.add("_smtp._tls.example.org", "TXT", "v=spf1 -all")
    record = await lookup_tlsrpt_record("example.org", resolver_for(lab_dns))
    assert record is not None
    assert record.rua == ("mailto:tlsrpt@example.org",)


async def test_rpt01_lookup_none_for_nxdomain_and_noanswer(lab_dns: LabDns) -> None:
    resolver = resolver_for(lab_dns)
    assert await lookup_tlsrpt_record("nothing.example", resolver) is None
    lab_dns.add("_smtp._tls.a.example", "A", "127.0.0.1")
    assert await lookup_tlsrpt_record("a.example", resolver) is None


async def test_rpt01_lookup_servfail_raises(lab_dns: LabDns) -> None:
    lab_dns.servfail("_smtp._tls.broken.example")
    with pytest.raises(TlsRptLookupError):
        await lookup_tlsrpt_record("broken.example", resolver_for(lab_dns))


async def test_rpt01_lookup_invalid_record_raises(lab_dns: LabDns) -> None:
    lab_dns.add("_smtp._tls.bad.example", "TXT", "v=TLSRPTv1; rua=mailto:nobody")
    with pytest.raises(TlsRptRecordError):
        await lookup_tlsrpt_record("bad.example", resolver_for(lab_dns))
