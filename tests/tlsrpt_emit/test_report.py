"""Report building and rendering: RPT-03/04/05/07/08/09, checked by parsedmarc and dkimpy."""

from __future__ import annotations

import base64
import datetime
import email
import email.policy
import gzip
import json
from email.message import EmailMessage
from typing import Any

import dkim
import dns.message
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from parsedmarc import parse_smtp_tls_report_json

from lab.dns import LabDns
from tests.tlsrpt_emit.sessions import DAY, NOON, STS_STRINGS, day_results, filled_store
from tlsrpt_emit.aggregate import build_reports, day_range, mx_patterns, submitter_for
from tlsrpt_emit.errors import ReportFormatError
from tlsrpt_emit.model import Report, ResultType
from tlsrpt_emit.render import (
    DkimKey,
    build_report_mail,
    gzip_report,
    parse_report_json,
    render_json,
    report_filename,
    report_to_dict,
)

CONTACT = "tlsrpt@reporter.example"


def reports_for_day(contact: str = CONTACT) -> list[Report]:
    store = filled_store()
    return build_reports(
        store.counts(DAY),
        day=DAY,
        organization_name="Reporter Org",
        contact_info=contact,
    )


def test_rpt03_one_report_per_domain_per_full_utc_day() -> None:
    reports = reports_for_day()
    assert [r.policy_domain for r in reports] == ["example.org", "plain.example"]
    start, end = day_range(DAY)
    assert all((r.start, r.end) == (start, end) for r in reports)
    assert end - start == datetime.timedelta(days=1)
    body = report_to_dict(reports[0])
    assert body["date-range"] == {
        "start-datetime": "2026-11-28T00:00:00Z",
        "end-datetime": "2026-11-29T00:00:00Z",
    }
    assert len({r.report_id for r in reports}) == 2
    # The id is made from day, domain and submitter: the same report always has the same id
    # (`tlsrpt show` and `send` agree); another submitter's report of that day has another.
    assert [r.report_id for r in reports_for_day()] == [r.report_id for r in reports]
    assert reports_for_day("t@other.example")[0].report_id != reports[0].report_id
    assert reports[0].report_id.startswith("2026-11-28T00:00:00Z_example.org_")


def test_rpt03_rows_of_other_days_left_out() -> None:
    store = filled_store()
    other = build_reports(
        store.counts(DAY),
        day=DAY + datetime.timedelta(days=1),
        organization_name="o",
        contact_info=CONTACT,
    )
    assert other == []


def test_rpt04_parsedmarc_counts_equal_sessions() -> None:
    reports = reports_for_day()
    parsed = [parse_smtp_tls_report_json(render_json(r)) for r in reports]
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for p in parsed:
        for pol in p["policies"]:
            by_domain.setdefault(pol["policy_domain"], []).append(pol)
    sessions = day_results()
    for domain, pols in by_domain.items():
        mine = [s for s in sessions if s.policy_domain == domain]
        assert sum(p["successful_session_count"] for p in pols) == sum(s.success for s in mine)
        assert sum(p["failed_session_count"] for p in pols) == sum(not s.success for s in mine)
        details = [d for p in pols for d in p.get("failure_details", [])]
        assert sum(d["failed_session_count"] for d in details) == sum(not s.success for s in mine)
    sts_policy = next(p for p in by_domain["example.org"] if p["policy_type"] == "sts")
    assert sts_policy["policy_strings"] == list(STS_STRINGS)
    fetch = next(p for p in by_domain["example.org"] if p["policy_type"] == "no-policy-found")
    assert fetch["failure_details"][0]["result_type"] == "sts-policy-fetch-error"
    assert parsed[0]["organization_name"] == "Reporter Org"


def test_rpt04_required_fields_and_json_types() -> None:
    body = json.loads(render_json(reports_for_day()[0]))
    assert isinstance(body["organization-name"], str)
    assert isinstance(body["contact-info"], str)
    assert isinstance(body["report-id"], str)
    for key in ("start-datetime", "end-datetime"):
        when = datetime.datetime.fromisoformat(body["date-range"][key])
        assert when.utcoffset() == datetime.timedelta(0)
    assert isinstance(body["policies"], list)
    for item in body["policies"]:
        pol = item["policy"]
        assert pol["policy-type"] in ("sts", "tlsa", "no-policy-found")
        assert isinstance(pol["policy-string"], list)
        assert all(isinstance(s, str) for s in pol["policy-string"])
        assert pol["policy-domain"] == "example.org"
        summary = item["summary"]
        for key in ("total-successful-session-count", "total-failure-session-count"):
            assert type(summary[key]) is int
        for detail in item["failure-details"]:
            assert type(detail["failed-session-count"]) is int
            assert isinstance(detail["failure-reason-code"], str)
            assert detail["failure-reason-code"]
    sts_item = next(i for i in body["policies"] if i["policy"]["policy-type"] == "sts")
    assert sts_item["policy"]["mx-host"] == ["*.mail.example.org"]
    detail = sts_item["failure-details"][0]
    assert detail == {
        "result-type": "certificate-not-trusted",
        "sending-mta-ip": "127.0.0.5",
        "receiving-mx-hostname": "mx1.mail.example.org",
        "receiving-ip": "127.0.0.21",
        "failed-session-count": 2,
        "failure-reason-code": "X509_V_ERR_UNTRUSTED",
    }


def test_rpt04_parse_reads_mx_host_string_or_list() -> None:
    body = report_to_dict(reports_for_day()[0])
    for item in body["policies"]:
        if item["policy"]["policy-type"] == "sts":
            item["policy"]["mx-host"] = "*.mail.example.org"
    report = parse_report_json(json.dumps(body))
    sts_policy = next(p for p in report.policies if p.policy_type == "sts")
    assert sts_policy.mx_hosts == ("*.mail.example.org",)
    original = reports_for_day()[0]
    again = parse_report_json(render_json(original))
    assert [p.successes for p in again.policies] == [p.successes for p in original.policies]
    assert [p.failures for p in again.policies] == [p.failures for p in original.policies]


def test_rpt05_only_rfc_result_types() -> None:
    allowed = {
        "starttls-not-supported",
        "certificate-host-mismatch",
        "certificate-expired",
        "certificate-not-trusted",
        "validation-failure",
        "tlsa-invalid",
        "dnssec-invalid",
        "dane-required",
        "sts-policy-fetch-error",
        "sts-policy-invalid",
        "sts-webpki-invalid",
    }
    assert {str(r) for r in ResultType} == allowed
    for report in reports_for_day():
        for item in report_to_dict(report)["policies"]:
            assert {d["result-type"] for d in item["failure-details"]} <= allowed


@settings(max_examples=200, deadline=None)
@given(st.text() | st.binary())
def test_rpt04_parse_any_input_returns_or_raises_format_error(data: str | bytes) -> None:
    try:
        report = parse_report_json(data)
    except ReportFormatError:
        return
    assert all(p.successes >= 0 for p in report.policies)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "policies",
                        "policy",
                        "summary",
                        "date-range",
                        "policy-type",
                        "failure-details",
                        "result-type",
                        "policy-domain",
                        "mx-host",
                        "organization-name",
                    ]
                ),
                inner,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_rpt04_parse_json_shaped_garbage(doc: object) -> None:
    try:
        report = parse_report_json(json.dumps(doc))
    except ReportFormatError:
        return
    assert isinstance(report.report_id, str)


def test_rpt07_file_name() -> None:
    report = reports_for_day()[0]
    name = report_filename(report)
    start = int(datetime.datetime(2026, 11, 28, tzinfo=datetime.UTC).timestamp())
    parts = name.removesuffix(".json.gz").split("!")
    assert name.endswith(".json.gz")
    assert parts[:4] == ["reporter.example", "example.org", str(start), str(start + 86400)]
    assert parts[4]
    idn = Report(**{**_fields(report), "policy_domain": "bücher.example", "submitter": "ö.example"})
    assert report_filename(idn).startswith("xn--nda.example!xn--bcher-kva.example!")


def _fields(report: Report) -> dict[str, Any]:
    return {f: getattr(report, f) for f in report.__dataclass_fields__}


def test_rpt08_gzip_round_trip() -> None:
    data = render_json(reports_for_day()[0])
    gz = gzip_report(data)
    assert gz[:2] == b"\x1f\x8b"
    assert gzip.decompress(gz) == data
    assert gzip_report(data) == gz  # deterministic


def test_submitter_from_contact_info() -> None:
    assert submitter_for("tlsrpt@Reporter.Example") == "reporter.example"
    assert submitter_for("tlsrpt@bücher.example") == "xn--bcher-kva.example"
    assert mx_patterns(STS_STRINGS) == ("*.mail.example.org",)


def publish_dkim(server: LabDns, public: str, service: str = "tlsrpt") -> None:
    """The key record at sel1._domainkey.reporter.example, split into 255-byte strings."""
    text = f"v=DKIM1; k=rsa; s={service}; p={public}"
    chunks = tuple(text[i : i + 255] for i in range(0, len(text), 255))
    server.add("sel1._domainkey.reporter.example", "TXT", chunks)


def make_dkim_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(der).decode()


def lab_dnsfunc(server: LabDns):  # type: ignore[no-untyped-def]
    """dkimpy's DNS hook answered from the lab DNS zone data (no socket: the loop is ours)."""

    def get_txt(name: bytes, timeout: int = 5) -> bytes | None:
        query = dns.message.make_query(name.decode(), dns.rdatatype.TXT)
        reply = server.answer(query.to_wire())
        assert reply is not None
        answer = dns.message.from_wire(reply).answer
        if not answer:
            return None
        return b"".join(answer[0][0].strings)  # type: ignore[no-any-return]

    return get_txt


@pytest.mark.parametrize("service", ["tlsrpt", "*"])
async def test_rpt09_mail_mime_headers_and_dkim(lab_dns: LabDns, service: str) -> None:
    report = reports_for_day()[0]
    data = render_json(report)
    pem, public = make_dkim_key()
    publish_dkim(lab_dns, public, service)
    raw = build_report_mail(
        report,
        gzip_report(data),
        mail_from="tlsrpt@reporter.example",
        rcpt_to=["rua@example.org"],
        now=NOON,
        dkim_key=DkimKey("reporter.example", "sel1", pem),
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")
    # dkimpy's "strict" demands s=tlsrpt; s=* is accepted in plain tlsrpt mode.
    mode: bool | str = "strict" if service == "tlsrpt" else True
    assert dkim.verify(raw, dnsfunc=lab_dnsfunc(lab_dns), tlsrpt=mode)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    sig = str(msg["DKIM-Signature"]).replace(" ", "").replace("\r\n", "")
    assert "l=" not in sig.split(";")
    signed = {h.strip().lower() for h in sig.split("h=")[1].split(";")[0].split(":")}
    assert {
        "from",
        "subject",
        "date",
        "message-id",
        "tls-report-domain",
        "tls-report-submitter",
    } <= signed
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "example.org"
    assert msg["TLS-Report-Submitter"] == "reporter.example"
    assert msg["TLS-Required"] == "No"
    assert msg["Subject"] == (
        f"Report Domain: example.org Submitter: reporter.example Report-ID: <{report.report_id}>"
    )
    for header in ("From", "To", "Date", "Message-ID"):
        assert msg[header]
    text, attachment = list(msg.iter_parts())
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    assert attachment["Content-Transfer-Encoding"] == "base64"
    assert attachment.get_filename() == report_filename(report)
    payload = attachment.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert gzip.decompress(payload) == data


async def test_rpt09_dkim_fails_when_tls_header_changed(lab_dns: LabDns) -> None:
    report = reports_for_day()[0]
    pem, public = make_dkim_key()
    publish_dkim(lab_dns, public)
    raw = build_report_mail(
        report,
        gzip_report(render_json(report)),
        mail_from="tlsrpt@reporter.example",
        rcpt_to=["rua@example.org"],
        now=NOON,
        dkim_key=DkimKey("reporter.example", "sel1", pem),
    )
    forged = raw.replace(b"TLS-Report-Domain: example.org", b"TLS-Report-Domain: evil.example")
    assert forged != raw
    assert not dkim.verify(forged, dnsfunc=lab_dnsfunc(lab_dns), tlsrpt="strict")


async def test_rpt09_parsedmarc_reads_the_mail() -> None:
    from parsedmarc import parse_report_email

    report = reports_for_day()[0]
    raw = build_report_mail(
        report,
        gzip_report(render_json(report)),
        mail_from="tlsrpt@reporter.example",
        rcpt_to=["rua@example.org"],
        now=NOON,
    )
    result = parse_report_email(raw, offline=True)
    assert result["report_type"] == "smtp_tls"
    assert result["report"]["report_id"] == report.report_id
