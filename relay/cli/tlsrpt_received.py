"""What `stsguard tlsrpt summary` reads beside our own TLS-RPT counts: the reports others sent about
our domains, as `[tlsrpt_inbound]` kept them (`--received`), and the downgrade prevalence of our
own sessions (a section of the `--html` page)."""

from __future__ import annotations

import dataclasses
import datetime

from relay.cli.detect_stats import stats_rows
from relay.cli.prevalence_html import prevalence_section
from relay.config import Config
from relay.errors import StsguardError, UsageError
from relay.state.database import StateError
from relay.state.stores import open_state, state_exists
from tlsrpt_emit.errors import ReceivedStoreError
from tlsrpt_emit.model import Report
from tlsrpt_emit.names import a_label
from tlsrpt_emit.render import parse_report_json


def kept_reports(config: Config, days: list[datetime.date], domain: str | None) -> list[Report]:
    """The received reports kept in the state whose range starts on one of `days` (only the
    policies of `domain` when given)."""
    if not state_exists(config.state_url):
        return []
    since = datetime.datetime.combine(days[0], datetime.time(), datetime.UTC).timestamp()
    try:
        state = open_state(config.state_url, front=False)
    except StateError as exc:
        raise UsageError(str(exc)) from None
    try:
        assert state.received is not None
        documents = state.received.documents(since)
    except ReceivedStoreError as exc:
        raise StsguardError(str(exc)) from None
    finally:
        state.close()
    reports = []
    for document in documents:
        report = parse_report_json(document)  # validated when it was kept
        if report.start.astimezone(datetime.UTC).date() not in days:
            continue
        if domain:
            policies = tuple(p for p in report.policies if a_label(p.policy_domain) == domain)
            if not policies:
                continue
            report = dataclasses.replace(report, policies=policies)
        reports.append(report)
    return reports


def prevalence_appendix(config: Config, days: list[datetime.date]) -> str:
    """The prevalence section of the HTML page for `days` ("" when nothing was counted)."""
    now = datetime.datetime.combine(days[-1], datetime.time(12), datetime.UTC).timestamp()
    rows = stats_rows(config, len(days), "", now=now)
    wanted = {d.isoformat() for d in days}
    return prevalence_section([r for r in rows if r.day in wanted], days)
