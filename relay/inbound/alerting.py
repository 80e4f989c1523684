"""Alerts on the reports that arrive about our own domains: one `warning` line, a counter, and
an optional notice mail, each at most once per UTC day, domain and kind (`tlsrpt_emit.alerts`).

`Alerter` is a listener of `ReportKeeper` and runs where the report was kept (a worker thread);
the notice mail is handed to the event loop through `notify`.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

import structlog

from relay.metrics import Metrics
from tlsrpt_emit.alerts import Alert, alerts_for, earlier_reports
from tlsrpt_emit.errors import ReportFormatError
from tlsrpt_emit.inbound import ReceivedReport, ReceivedReportStore
from tlsrpt_emit.render import parse_report_json

log = structlog.get_logger(__name__)

DAY = 86400.0


class Alerter:
    """Judges each newly kept report against the reports of the last `days` days."""

    def __init__(
        self,
        store: ReceivedReportStore,
        domains: tuple[str, ...],
        *,
        days: int,
        failure_share: float,
        metrics: Metrics | None = None,
        notify: Callable[[Alert], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.domains = domains
        self.days = days
        self.failure_share = failure_share
        self.metrics = metrics
        self.notify = notify
        self.clock = clock

    def __call__(self, received: ReceivedReport) -> None:
        now = self.clock()
        since = now - self.days * DAY
        kept = []
        for document in self.store.documents(since):
            try:
                kept.append(parse_report_json(document))
            except ReportFormatError:
                continue  # kept by an older, more lenient reader: not comparable
        earlier = earlier_reports(
            kept,
            received.report.report_id,
            since=datetime.datetime.fromtimestamp(since, datetime.UTC),
        )
        day = datetime.datetime.fromtimestamp(now, datetime.UTC).date().isoformat()
        found = alerts_for(received.report, earlier, self.domains, failure_share=self.failure_share)
        for alert in found:
            if self.store.claim_alert(day, alert.domain, str(alert.kind)):
                self._raise(alert)

    def _raise(self, alert: Alert) -> None:
        log.warning(
            "tlsrpt_inbound.alert",
            domain=alert.domain,
            kind=str(alert.kind),
            detail=alert.detail,
            report_id=alert.report_id,
            organization=alert.organization,
        )
        if self.metrics is not None:
            self.metrics.tlsrpt_alerts.labels(kind=str(alert.kind)).inc()
        if self.notify is not None:
            self.notify(alert)
