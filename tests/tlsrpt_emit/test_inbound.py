"""Reports that arrive about our own domains (pure): media types, size caps before and after
gunzip, our domains only, real senders' quirks, one copy per report-id."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsrpt_emit.errors import ReportRefused
from tlsrpt_emit.inbound import (
    MAX_BODY_BYTES,
    MemoryReceivedReportStore,
    accept_report,
    gunzip_capped,
    reports_in_mail,
    unpack_body,
)
from tlsrpt_emit.model import PolicyType

PEERS = Path(__file__).parent / "peer_reports"
NOW = 1_800_000_000.0

# (file, our domain in it, sending organisation)
SAMPLES = [
    ("parsedmarc-google.com_smtp_tls_report.eml", "cardinalhealth.ca", "Google Inc."),
    ("parsedmarc-mail.ru.json", "example.com", "Mail.ru"),
    ("parsedmarc-rfc8460.json", "company-y.example", "Company-X"),
    ("parsedmarc-smtp_tls.json", "example.com", "Example Inc."),
    ("parsedmarc-empty_failure_detail_fields.json", "example.com", "Reporter Example"),
    ("shape-microsoft-tlsa.json", "example.com", "Microsoft Corporation"),
    ("shape-no-contact-info.json", "EXAMPLE.com.", "mail.example.net"),
]


def gzip_bomb(unpacked: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1024 * 1024)
    out = [packer.compress(chunk) for _ in range(unpacked // len(chunk))]
    return b"".join(out) + packer.flush()


@pytest.mark.parametrize(("name", "domain", "org"), SAMPLES)
def test_real_senders_reports_are_taken_for_our_domain(name: str, domain: str, org: str) -> None:
    data = (PEERS / name).read_bytes()
    if name.endswith(".eml"):
        (received,) = reports_in_mail(data, [domain], now=NOW)
    else:
        received = accept_report(data, [domain], via="https", now=NOW)
        gz = unpack_body(gzip.compress(data), "application/tlsrpt+gzip; charset=x")
        assert accept_report(gz, [domain], via="https", now=NOW).report == received.report
    assert received.report.organization_name == org
    assert received.domains
    with pytest.raises(ReportRefused) as refused:
        accept_report(received.document, ["other.example"], via="https", now=NOW)
    assert refused.value.status == 403


def test_microsoft_tlsa_policy_string_and_missing_fields() -> None:
    data = (PEERS / "shape-microsoft-tlsa.json").read_bytes()
    report = accept_report(data, ["example.com"], via="https", now=NOW).report
    tlsa, sts = report.policies
    assert tlsa.policy_type is PolicyType.TLSA
    assert tlsa.policy_strings[0].startswith("3 1 1 ")
    assert [f.sending_mta_ip for f, _ in tlsa.failures] == [""]
    assert (sts.policy_strings, sts.failure_total) == ((), 3)


def test_mail_ru_counts_that_do_not_add_up_keep_the_summary() -> None:
    report = accept_report(
        (PEERS / "parsedmarc-mail.ru.json").read_bytes(), ["example.com"], via="https", now=NOW
    ).report
    (policy,) = report.policies
    assert policy.failure_total == 1
    assert sum(n for _, n in policy.failures) == 2


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("application/json", 415), ("", 415), ("text/plain", 415), ("application/tlsrpt+gzip", 400)],
)
def test_wrong_media_type_or_not_gzip(content_type: str, status: int) -> None:
    with pytest.raises(ReportRefused) as refused:
        unpack_body(b'{"x": 1}', content_type)
    assert refused.value.status == status


def test_size_caps_before_and_after_gunzip() -> None:
    with pytest.raises(ReportRefused) as refused:
        unpack_body(b"{" + b" " * MAX_BODY_BYTES + b"}", "application/tlsrpt+json")
    assert refused.value.status == 413
    bomb = gzip_bomb(64 * 1024 * 1024)
    assert len(bomb) < MAX_BODY_BYTES
    with pytest.raises(ReportRefused) as refused:
        unpack_body(bomb, "application/tlsrpt+gzip")
    assert refused.value.status == 413
    assert gunzip_capped(gzip.compress(b"x" * 100), cap=100) == b"x" * 100


@pytest.mark.parametrize(
    "document",
    [b"not json", b"[]", b'{"organization-name": 5}', json.dumps({"report-id": ""}).encode()],
)
def test_not_a_report_is_400(document: bytes) -> None:
    with pytest.raises(ReportRefused) as refused:
        accept_report(document, ["example.com"], via="https", now=NOW)
    assert refused.value.status == 400


def test_one_copy_per_report_id() -> None:
    store = MemoryReceivedReportStore()
    data = (PEERS / "parsedmarc-mail.ru.json").read_bytes()
    first = accept_report(data, ["example.com"], via="https", now=NOW)
    again = accept_report(data, ["example.com"], via="maildir", now=NOW + 5)
    assert store.add(first)
    assert not store.add(again)
    assert store.documents(0.0) == [data]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=30), inner, max_size=6)
    ),
    max_leaves=20,
)
_KEYS = [
    "organization-name",
    "date-range",
    "contact-info",
    "report-id",
    "policies",
    "policy",
    "policy-type",
    "policy-string",
    "policy-domain",
    "mx-host",
    "summary",
    "failure-details",
    "result-type",
    "failed-session-count",
    "total-successful-session-count",
    "total-failure-session-count",
    "start-datetime",
    "end-datetime",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([n for n, _, _ in SAMPLES if n.endswith(".json")]), st.data())
def test_hostile_changes_to_real_reports_are_refused_not_crashes(
    name: str, data: st.DataObject
) -> None:
    """Any value at any known key of a real report: the report is taken or refused (400/403),
    never another exception."""
    doc = json.loads((PEERS / name).read_bytes())
    node = doc
    for _ in range(data.draw(st.integers(0, 3))):
        if isinstance(node, dict) and node:
            node = node[data.draw(st.sampled_from(sorted(node)))]
        elif isinstance(node, list) and node:
            node = node[data.draw(st.integers(0, len(node) - 1))]
    if isinstance(node, dict):
        node[data.draw(st.sampled_from(_KEYS))] = data.draw(_json)
    document = json.dumps(doc).encode()
    assert refusal(lambda: accept_report(document, ["example.com"], via="https", now=NOW)) in (
        None,
        400,
        403,
    )


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=300), st.sampled_from(["application/tlsrpt+gzip", "application/tlsrpt+json"])
)
def test_any_body_is_taken_or_refused(body: bytes, content_type: str) -> None:
    status = refusal(
        lambda: accept_report(
            unpack_body(body, content_type), ["example.com"], via="https", now=NOW
        )
    )
    assert status in (None, 400, 403, 413)


def test_deeply_nested_policy_strings_are_refused() -> None:
    doc = json.loads((PEERS / "parsedmarc-rfc8460.json").read_bytes())
    doc["policies"][0]["policy"]["policy-string"] = json.loads("[" * 900 + "]" * 900)
    document = json.dumps(doc).encode()
    assert (
        refusal(lambda: accept_report(document, ["company-y.example"], via="https", now=NOW)) == 400
    )


def refusal(take: Callable[[], object]) -> int | None:
    """None when taken, else the status of the refusal (any other exception fails the test)."""
    try:
        take()
    except ReportRefused as exc:
        return exc.status
    return None
