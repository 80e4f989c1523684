"""Alerts from the reports others send about our own domains (pure).

A report that shows, for one of our domains, a result type not seen in the reports of the last
N days, or a failure share above the threshold, raises an `Alert`. Whoever raises it keeps it to
once per (UTC day, domain, kind) (`relay.inbound.alerting`); `alert_mail` is the short notice.
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from enum import StrEnum

from tlsrpt_emit.model import Report
from tlsrpt_emit.names import a_label


class AlertKind(StrEnum):
    NEW_RESULT_TYPE = "new-result-type"
    FAILURE_SHARE = "failure-share"


@dataclass(frozen=True, slots=True)
class Alert:
    domain: str
    kind: AlertKind
    detail: str
    report_id: str
    organization: str


def _result_types(report: Report, domain: str) -> set[str]:
    return {
        str(f.result_type)
        for p in report.policies
        if a_label(p.policy_domain) == domain
        for f, _ in p.failures
    }


def alerts_for(
    report: Report,
    earlier: Iterable[Report],
    own_domains: Iterable[str],
    *,
    failure_share: float,
) -> list[Alert]:
    """What `report` shows that is new or too bad, for each of our domains it is about;
    `earlier` are the reports of the last N days (without `report`)."""
    ours = {a_label(d) for d in own_domains}
    before = list(earlier)
    alerts = []
    for domain in sorted({a_label(p.policy_domain) for p in report.policies} & ours):
        seen = set().union(*(_result_types(r, domain) for r in before))
        new = sorted(_result_types(report, domain) - seen)
        if new:
            alerts.append(
                Alert(
                    domain,
                    AlertKind.NEW_RESULT_TYPE,
                    ", ".join(new),
                    report.report_id,
                    report.organization_name,
                )
            )
        mine = [p for p in report.policies if a_label(p.policy_domain) == domain]
        failed = sum(p.failure_total for p in mine)
        sessions = failed + sum(p.successes for p in mine)
        if sessions and failed / sessions > failure_share:
            alerts.append(
                Alert(
                    domain,
                    AlertKind.FAILURE_SHARE,
                    f"{failed} of {sessions} sessions failed ({100 * failed / sessions:.0f}%)",
                    report.report_id,
                    report.organization_name,
                )
            )
    return alerts


def alert_mail(alert: Alert, *, sender: str, to: str, now: float) -> bytes:
    """A short plain-text notice of one alert."""
    what = {
        AlertKind.NEW_RESULT_TYPE: f"a failure not seen before: {alert.detail}",
        AlertKind.FAILURE_SHARE: f"many failures: {alert.detail}",
    }[alert.kind]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"TLS reports for {alert.domain}: {what}"[:200]
    message["Date"] = email.utils.formatdate(now, usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(
        f"{alert.organization} sent a TLS report (report-id {alert.report_id}) about "
        f"{alert.domain} that shows {what}.\n\n"
        "Read it with: stsguard tlsrpt summary --received --domain "
        f"{alert.domain}\n\nThis notice is sent at most once per domain and kind a day.\n"
    )
    return message.as_bytes()


def earlier_reports(
    reports: Sequence[Report], report_id: str, *, since: datetime.datetime
) -> list[Report]:
    """The reports to compare with: other ids, ending at or after `since`."""
    return [r for r in reports if r.report_id != report_id and r.end >= since]
