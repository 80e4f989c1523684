"""Our strict validator (a JSON Schema from RFC 8460 section 4, `strict.py`) and the peers'
reports: the schema accepts the RFC's own example and our reports, and rejects each fault of
issue 14; parsedmarc's real samples (Google's report mail, Mail.ru, the RFC example) are read by
our parser."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.tlsrpt_emit.sessions import DAY, filled_store
from tests.tlsrpt_emit.strict import check_report, schema_errors
from tlsrpt_emit.aggregate import build_reports
from tlsrpt_emit.errors import ReportFormatError
from tlsrpt_emit.model import PolicyType, ResultType
from tlsrpt_emit.received import read_received
from tlsrpt_emit.render import gzip_report, report_to_dict

PEERS = Path(__file__).parent / "peer_reports"


def our_reports() -> list[dict[str, Any]]:
    reports = build_reports(
        filled_store().counts(DAY),
        day=DAY,
        organization_name="Reporter Org",
        contact_info="tlsrpt@reporter.example",
    )
    return [report_to_dict(r) for r in reports]


def rfc_example() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((PEERS / "parsedmarc-rfc8460.json").read_text())
    return doc


def test_schema_accepts_the_rfc_example_with_mx_host_a_string() -> None:
    """Erratum 6241: appendix B writes mx-host as a string where 4.4 says array."""
    doc = rfc_example()
    assert isinstance(doc["policies"][0]["policy"]["mx-host"], str)
    assert schema_errors(doc) == []
    doc["policies"][0]["policy"]["mx-host"] = [doc["policies"][0]["policy"]["mx-host"]]
    assert schema_errors(doc) == []


def test_every_report_we_build_passes_schema_parsedmarc_and_our_parser() -> None:
    for doc in our_reports():
        check_report(doc)


def _detail(doc: dict[str, Any]) -> dict[str, Any]:
    detail: dict[str, Any] = doc["policies"][0]["failure-details"][0]
    return detail


@pytest.mark.parametrize(
    ("fault", "spoil", "where"),
    [
        ("D1", lambda d: _detail(d).pop("sending-mta-ip"), "'sending-mta-ip' is a required"),
        ("D3", lambda d: d.update({"contact-info": "mailto:x@company-x.example"}), "contact-info"),
        (
            "D4",
            lambda d: _detail(d).update({"additional-information": "ehlo-refused: 502 5.5.2 x"}),
            "additional-information",
        ),
        ("D5", lambda d: _detail(d).update({"receiving-mx-helo": "5.5.2"}), "receiving-mx-helo"),
        (
            "D7",
            lambda d: d["policies"][0]["policy"].update({"policy-domain": "bücher.example"}),
            "policy-domain",
        ),
        ("ip", lambda d: _detail(d).update({"receiving-ip": "mx.example"}), "receiving-ip"),
        ("type", lambda d: _detail(d).update({"result-type": "tls-failed"}), "result-type"),
        ("count", lambda d: _detail(d).update({"failed-session-count": "3"}), "failed-session"),
        ("extra", lambda d: d.update({"x-vendor": 1}), "Additional properties"),
        (
            "zone",
            lambda d: d["date-range"].update({"start-datetime": "2016-04-01T00:00:00"}),
            "start-datetime",
        ),
    ],
)
def test_schema_rejects_each_fault(fault: str, spoil: Any, where: str) -> None:
    doc = copy.deepcopy(rfc_example())
    spoil(doc)
    errors = schema_errors(doc)
    assert errors, fault
    assert any(where in e for e in errors), errors


def test_check_report_catches_counts_that_do_not_add_up() -> None:
    doc = our_reports()[0]
    doc["policies"][0]["summary"]["total-failure-session-count"] += 1
    with pytest.raises(AssertionError):
        check_report(doc)


# --- peers' reports read by our parser -------------------------------------------------------


def test_google_report_mail_is_read() -> None:
    (report,) = read_received((PEERS / "parsedmarc-google.com_smtp_tls_report.eml").read_bytes())
    assert report.organization_name == "Google Inc."
    assert report.policy_domain == "cardinalhealth.ca"
    (policy,) = report.policies
    assert policy.policy_type is PolicyType.NO_POLICY_FOUND
    assert (policy.successes, policy.failure_total) == (48, 0)


def test_rfc_example_is_read_with_mx_host_a_string() -> None:
    (report,) = read_received((PEERS / "parsedmarc-rfc8460.json").read_bytes())
    (policy,) = report.policies
    assert policy.mx_hosts == ("*.mail.company-y.example",)
    assert (policy.successes, policy.failure_total) == (5326, 303)
    assert [(f.result_type, n) for f, n in policy.failures] == [
        (ResultType.CERTIFICATE_EXPIRED, 100),
        (ResultType.STARTTLS_NOT_SUPPORTED, 200),
        (ResultType.VALIDATION_FAILURE, 3),
    ]
    assert policy.failures[2][0].failure_reason_code == "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"


def test_mail_ru_report_without_policy_string_or_addresses_is_read() -> None:
    (report,) = read_received((PEERS / "parsedmarc-mail.ru.json").read_bytes())
    (policy,) = report.policies
    assert report.organization_name == "Mail.ru"
    assert policy.policy_strings == ()
    assert policy.failure_total == 1  # the summary says 1; its two details say 1 each
    assert {f.failure_reason_code for f, _ in policy.failures} == {
        "bad https response code: 404",
        "bad https response code: 500",
    }


@pytest.mark.parametrize(
    "name", ["parsedmarc-smtp_tls.json", "parsedmarc-empty_failure_detail_fields.json"]
)
def test_other_samples_are_read(name: str) -> None:
    (report,) = read_received((PEERS / name).read_bytes())
    assert report.policies[0].policy_domain == "example.com"
    assert report.policies[0].failure_total >= 1


def test_gzip_and_json_of_our_own_reports_are_read_back() -> None:
    doc = our_reports()[0]
    data = json.dumps(doc).encode()
    assert read_received(gzip_report(data))[0].report_id == doc["report-id"]
    assert read_received(data)[0].report_id == doc["report-id"]


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"\x1f\x8bnot gzip", b"Subject: x\r\n\r\nno report here\r\n", b"{nope"],
)
def test_what_is_no_report_is_one_clear_error(data: bytes) -> None:
    with pytest.raises(ReportFormatError):
        read_received(data)
