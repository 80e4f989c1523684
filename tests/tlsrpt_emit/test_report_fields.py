"""Issue 14 D3-D7: report fields as RFC 8460 section 4.4 and 5 write them, with the inputs that
showed each fault."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from detect.ehlo import greeting_name, judge_ehlo
from mtasts.errors import StsRecordError
from mtasts.parse import parse_sts_record
from relay.config import config_from_dict, load_config
from relay.errors import ConfigError
from relay.reports import report_settings
from tests.tlsrpt_emit.sessions import DAY, NOON
from tlsrpt_emit.aggregate import build_reports, contact_address
from tlsrpt_emit.errors import TlsRptRecordError
from tlsrpt_emit.model import PolicyType, ResultType, SessionResult, split_diagnostics
from tlsrpt_emit.record import parse_tlsrpt_record
from tlsrpt_emit.render import (
    build_report_mail,
    gzip_report,
    render_json,
    report_filename,
    report_to_dict,
)
from tlsrpt_emit.schedule import build_day_reports
from tlsrpt_emit.sink import CountingSink
from tlsrpt_emit.store import MemoryReportStore

EHLO_REFUSED = "ehlo-refused: 502 5.5.2 Error: command not recognized"


def one_day(*results: SessionResult, contact: str = "tlsrpt@reporter.example") -> list[dict]:  # type: ignore[type-arg]
    store = MemoryReportStore()
    sink = CountingSink(store, clock=lambda: 0.0)
    for result in results:
        sink.record(result)
    sink.flush()
    reports = build_reports(
        store.counts(DAY), day=DAY, organization_name="Org", contact_info=contact
    )
    return [report_to_dict(r) for r in reports]


def failure(**kw: str) -> SessionResult:
    fields: dict[str, str] = {
        "policy_domain": "example.org",
        "mx_host": "mx.example.org",
        "receiving_ip": "127.0.0.20",
        "sending_mta_ip": "127.0.0.5",
    }
    fields.update(kw)
    return SessionResult(
        policy_type=PolicyType.STS,
        policy_strings=("version: STSv1", "mode: enforce", "mx: mx.example.org", "max_age: 9"),
        when=NOON,
        result_type=ResultType.STARTTLS_NOT_SUPPORTED,
        **fields,  # type: ignore[arg-type]
    )


# --- D3: contact-info is an e-mail address; the submitter is its domain ----------------------


def test_d3_default_contact_info_is_an_address_not_a_mailto_uri() -> None:
    config = config_from_dict({"relay": {"hostname": "relay.example.net"}})
    settings = report_settings(config)
    assert settings.contact_info == "postmaster@relay.example.net"
    assert settings.submitter == "relay.example.net"
    (report,) = one_day(failure(), contact=settings.contact_info)
    assert report["contact-info"] == "postmaster@relay.example.net"


def test_d3_a_configured_mailto_uri_is_read_as_its_address(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[tlsrpt]\ncontact_info = "mailto:TLSRPT@Reporter.Example"\n')
    assert load_config(path).tlsrpt.contact_info == "TLSRPT@reporter.example"


@pytest.mark.parametrize("bad", ["https://reports.example/x", "reporter.example", "a b@c.d"])
def test_d3_contact_info_that_is_no_address_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"\[tlsrpt\]\.contact_info: .*not an e-mail address"):
        config_from_dict({"tlsrpt": {"contact_info": bad}})
    with pytest.raises(ValueError, match="not an e-mail address"):
        contact_address(bad)


def test_d3_submitter_other_than_the_contact_domain_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[tlsrpt\]\.submitter: .*RFC 8460 5\.3"):
        config_from_dict(
            {"tlsrpt": {"contact_info": "tlsrpt@reporter.example", "submitter": "other.example"}}
        )
    with pytest.raises(ConfigError, match=r"\[tlsrpt\]\.submitter"):
        config_from_dict({"relay": {"hostname": "relay.a.example"}, "tlsrpt": {"submitter": "b"}})
    same = config_from_dict(
        {"tlsrpt": {"contact_info": "tlsrpt@reporter.example", "submitter": "Reporter.Example."}}
    )
    settings = report_settings(same)
    store = MemoryReportStore()
    sink = CountingSink(store, clock=lambda: 0.0)
    sink.record(failure())
    sink.flush()
    (report,) = build_day_reports(store, DAY, settings)
    mail = build_report_mail(
        report,
        gzip_report(render_json(report)),
        mail_from=settings.sender_address,
        rcpt_to=["rua@example.org"],
        now=NOON,
    )
    msg = email.message_from_bytes(mail, policy=email.policy.default)
    assert msg["TLS-Report-Submitter"] == "reporter.example"
    assert msg["From"] == "tlsrpt@reporter.example"
    assert report_filename(report).startswith("reporter.example!example.org!")


# --- D4: additional-information is a URI; free text is the failure-reason-code ---------------


def test_d4_free_text_goes_to_failure_reason_code() -> None:
    (report,) = one_day(failure(additional_information=EHLO_REFUSED))
    (detail,) = report["policies"][0]["failure-details"]
    assert "additional-information" not in detail
    assert detail["failure-reason-code"] == EHLO_REFUSED


def test_d4_a_uri_stays_additional_information_beside_the_code() -> None:
    (report,) = one_day(
        failure(
            failure_reason_code="X509_V_ERR_UNTRUSTED",
            additional_information="https://relay.example.net/tlsrpt/why#1",
        ),
        failure(failure_reason_code="X509_V_ERR_UNTRUSTED", additional_information="bad chain"),
    )
    details = report["policies"][0]["failure-details"]
    assert {d.get("additional-information") for d in details} == {
        "https://relay.example.net/tlsrpt/why#1",
        None,
    }
    assert {d["failure-reason-code"] for d in details} == {
        "X509_V_ERR_UNTRUSTED",
        "X509_V_ERR_UNTRUSTED: bad chain",
    }


@pytest.mark.parametrize(
    ("code", "info", "expected"),
    [
        ("", EHLO_REFUSED, (EHLO_REFUSED, "")),
        ("ehlo-refused", EHLO_REFUSED, (EHLO_REFUSED, "")),
        ("X", "urn:ietf:params:x", ("X", "urn:ietf:params:x")),
        ("X", "", ("X", "")),
        ("", "mailto:postmaster@example.net", ("", "mailto:postmaster@example.net")),
    ],
)
def test_d4_split_diagnostics(code: str, info: str, expected: tuple[str, str]) -> None:
    assert split_diagnostics(code, info) == expected


# --- D5: receiving-mx-helo is the server's name, or absent -----------------------------------


def test_d5_refused_ehlo_names_no_server() -> None:
    judged = judge_ehlo(502, ["5.5.2 Error: command not recognized"], expect_starttls=True)
    assert judged.server_name == ""
    (report,) = one_day(failure(receiving_mx_helo=judged.server_name))
    assert "receiving-mx-helo" not in report["policies"][0]["failure-details"][0]


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("mx.example.org ESMTP Postfix", "mx.example.org"),
        ("[192.0.2.25] hello", "[192.0.2.25]"),
        ("5.5.2 Error: command not recognized", ""),
        ("192.0.2.25", ""),
        ("**** ESMTP", ""),
        ("mx.bücher.example", "mx.bücher.example"),
    ],
)
def test_d5_greeting_name(line: str, name: str) -> None:
    assert greeting_name(line) == name
    assert judge_ehlo(250, [line, "STARTTLS"], expect_starttls=True).server_name == name


# --- D7: policy-domain in A-labels, like the file name and TLS-Report-Domain -----------------


@pytest.mark.parametrize(
    ("domain", "a_label"),
    [
        ("bücher.example", "xn--bcher-kva.example"),
        ("faß.de", "xn--fa-hia.de"),
        ("ς.example", "xn--3xa.example"),
    ],
)
def test_d7_policy_domain_is_the_a_label(domain: str, a_label: str) -> None:
    store = MemoryReportStore()
    sink = CountingSink(store, clock=lambda: 0.0)
    sink.record(failure(policy_domain=domain, mx_host=f"mx.{domain}"))
    sink.flush()
    (report,) = build_reports(
        store.counts(DAY), day=DAY, organization_name="Org", contact_info="t@reporter.example"
    )
    body = report_to_dict(report)
    assert body["policies"][0]["policy"]["policy-domain"] == a_label
    assert body["policies"][0]["failure-details"][0]["receiving-mx-hostname"] == f"mx.{a_label}"
    assert a_label in body["report-id"]
    assert report_filename(report).split("!")[1] == a_label
    mail = build_report_mail(
        report, b"gz", mail_from="t@reporter.example", rcpt_to=["r@x.example"], now=NOON
    )
    msg = email.message_from_bytes(mail, policy=email.policy.default)
    assert msg["TLS-Report-Domain"] == a_label


# --- the two TXT record parsers agree on ";;" ------------------------------------------------


@pytest.mark.parametrize("middle", [";;", "; ;", " ;; "])
def test_record_parsers_agree_empty_field_is_an_error(middle: str) -> None:
    with pytest.raises(TlsRptRecordError, match="empty field"):
        parse_tlsrpt_record(f"v=TLSRPTv1{middle}rua=mailto:r@example.org")
    with pytest.raises(TlsRptRecordError, match="empty field"):
        parse_tlsrpt_record(f"v=TLSRPTv1; rua=mailto:r@example.org{middle}x=y")
    with pytest.raises(StsRecordError, match="empty field"):
        parse_sts_record(f"v=STSv1{middle}id=1")
    with pytest.raises(StsRecordError, match="empty field"):
        parse_sts_record(f"v=STSv1; id=1{middle}x=y")


def test_record_parsers_agree_trailing_delimiter_is_allowed() -> None:
    assert parse_tlsrpt_record("v=TLSRPTv1; rua=mailto:r@example.org;").rua
    assert parse_sts_record("v=STSv1; id=1;").id == "1"
