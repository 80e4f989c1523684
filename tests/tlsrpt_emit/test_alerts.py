"""Alerts from received reports (pure): a result type not seen in the earlier reports, a failure
share above the threshold; the notice mail."""

from __future__ import annotations

import email
import json
from pathlib import Path

from tlsrpt_emit.alerts import AlertKind, alert_mail, alerts_for
from tlsrpt_emit.render import parse_report_json

PEERS = Path(__file__).parent / "peer_reports"


def report(name: str, report_id: str = ""):  # type: ignore[no-untyped-def]
    doc = json.loads((PEERS / name).read_bytes())
    if report_id:
        doc["report-id"] = report_id
    return parse_report_json(json.dumps(doc))


def test_a_new_result_type_and_a_high_failure_share() -> None:
    microsoft = report("shape-microsoft-tlsa.json")
    found = alerts_for(microsoft, [], ["example.com"], failure_share=0.05)
    assert [(a.domain, a.kind, a.detail) for a in found] == [
        ("example.com", AlertKind.NEW_RESULT_TYPE, "sts-policy-fetch-error, tlsa-invalid"),
        ("example.com", AlertKind.FAILURE_SHARE, "5 of 46 sessions failed (11%)"),
    ]
    # Seen before (an earlier report had them) and under the threshold: nothing.
    again = report("shape-microsoft-tlsa.json", "another-id")
    assert alerts_for(again, [microsoft], ["example.com"], failure_share=0.2) == []


def test_only_our_domains() -> None:
    assert (
        alerts_for(report("parsedmarc-mail.ru.json"), [], ["other.example"], failure_share=0) == []
    )


def test_the_notice_mail() -> None:
    (alert, _) = alerts_for(
        report("shape-microsoft-tlsa.json"), [], ["example.com"], failure_share=0.05
    )
    mail = email.message_from_bytes(
        alert_mail(alert, sender="postmaster@relay.example", to="ops@example.com", now=0.0)
    )
    assert mail["To"] == "ops@example.com"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert "example.com" in mail["Subject"]
    assert "tlsa-invalid" in mail["Subject"]
