"""Reports other senders send about our own domains (RFC 8460 5.3), as they arrive (pure).

An https POST body or a report mail becomes a validated `ReceivedReport`: the media type is
checked, gzip is unpacked with a cap on the unpacked size (a small body can unpack to
gigabytes), the JSON is read as `tlsrpt_emit.render.parse_report_json` reads real senders'
reports, and the report must be about one of our domains. Reports are kept by `report-id`
(RFC 8460 4.4): a sender that retries delivers the same report twice, and it is counted once.
"""

from __future__ import annotations

import datetime
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from tlsrpt_emit.errors import ReportFormatError, ReportRefused
from tlsrpt_emit.model import Report
from tlsrpt_emit.names import a_label
from tlsrpt_emit.received import report_documents
from tlsrpt_emit.render import parse_report_json

MAX_BODY_BYTES = 1024 * 1024  # a POST body (usually gzip) larger than this is refused
MAX_UNPACKED_BYTES = 8 * 1024 * 1024  # what one report may unpack to
GZIP = "application/tlsrpt+gzip"
JSON = "application/tlsrpt+json"


@dataclass(frozen=True, slots=True)
class ReceivedReport:
    """One validated report about our domains, with the JSON it came as."""

    report: Report
    document: bytes  # the report's JSON, unpacked
    via: str  # "https" | "maildir"
    received_at: float

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(sorted({a_label(p.policy_domain) for p in self.report.policies}))


def unpack_body(body: bytes, content_type: str) -> bytes:
    """The JSON of a POSTed report (RFC 8460 5.3: ``application/tlsrpt+gzip`` or ``+json``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in (GZIP, JSON):
        raise ReportRefused(f"media type {media or '(none)'!r}: want {GZIP} or {JSON}", status=415)
    if len(body) > MAX_BODY_BYTES:
        raise ReportRefused(f"body larger than {MAX_BODY_BYTES} bytes", status=413)
    if media == JSON:
        return body
    return gunzip_capped(body)


def gunzip_capped(data: bytes, cap: int = MAX_UNPACKED_BYTES) -> bytes:
    """gzip unpacked, refusing more than `cap` bytes out (a gzip bomb stops at the cap)."""
    unpacker = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = unpacker.decompress(data, cap + 1)
    except zlib.error as exc:
        raise ReportRefused(f"not gzip: {exc}") from None
    if len(out) > cap or unpacker.unconsumed_tail:
        raise ReportRefused(f"unpacks to more than {cap} bytes", status=413)
    return out


def accept_report(
    document: bytes, own_domains: Iterable[str], *, via: str, now: float
) -> ReceivedReport:
    """A report we take: valid JSON of RFC 8460 4.4 about at least one of `own_domains`."""
    try:
        report = parse_report_json(document)
    except ReportFormatError as exc:
        raise ReportRefused(f"not a TLS-RPT report: {exc}") from None
    if not report.report_id.strip():
        raise ReportRefused("the report has no report-id")
    ours = {a_label(d) for d in own_domains}
    named = {a_label(p.policy_domain) for p in report.policies if p.policy_domain}
    if not named & ours:
        shown = ", ".join(sorted(named)) or "no domain"
        raise ReportRefused(f"the report is about {shown}, not one of our domains", status=403)
    return ReceivedReport(report, document, via, now)


def reports_in_mail(data: bytes, own_domains: Iterable[str], *, now: float) -> list[ReceivedReport]:
    """The reports of one report mail (a Maildir file), each one we take (`accept_report`)."""
    try:
        documents = report_documents(data)
    except ReportFormatError as exc:
        raise ReportRefused(f"not a report mail: {exc}") from None
    domains = tuple(own_domains)
    return [accept_report(d, domains, via="maildir", now=now) for d in documents]


def day_of(report: Report) -> datetime.date:
    return report.start.astimezone(datetime.UTC).date()


class ReceivedReportStore(Protocol):
    """Where received reports are kept: `relay.state.received_store.SqlReceivedReportStore`;
    implementations raise `tlsrpt_emit.errors.ReceivedStoreError`."""

    def add(self, received: ReceivedReport) -> bool:
        """Keep a report; False when one with its report-id is already kept."""
        ...

    def documents(self, since: float) -> list[bytes]:
        """The JSON of every report whose range ends at or after `since` (Unix time)."""
        ...

    def claim_alert(self, day: str, domain: str, kind: str) -> bool:
        """True the first time (day, domain, kind) is claimed: an alert goes out once."""
        ...


class MemoryReceivedReportStore:
    """Received reports in a dict (tests)."""

    def __init__(self) -> None:
        self.reports: dict[str, ReceivedReport] = {}
        self.alerts: set[tuple[str, str, str]] = set()

    def claim_alert(self, day: str, domain: str, kind: str) -> bool:
        if (day, domain, kind) in self.alerts:
            return False
        self.alerts.add((day, domain, kind))
        return True

    def add(self, received: ReceivedReport) -> bool:
        if received.report.report_id in self.reports:
            return False
        self.reports[received.report.report_id] = received
        return True

    def documents(self, since: float) -> list[bytes]:
        return [r.document for r in self.reports.values() if r.report.end.timestamp() >= since]
