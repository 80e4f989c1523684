"""Keeping a validated received report: stored once per report-id, one log line, a counter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from relay.metrics import Metrics
from tlsrpt_emit.inbound import ReceivedReport, ReceivedReportStore

log = structlog.get_logger(__name__)

ReportListener = Callable[[ReceivedReport], None]


class ReportKeeper:
    """Stores received reports (in a worker thread) and tells the listeners of new ones."""

    def __init__(self, store: ReceivedReportStore, *, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.listeners: list[ReportListener] = []

    def keep(self, received: ReceivedReport) -> bool:
        """Store one report; False when its report-id was kept before (a duplicate)."""
        new = self.store.add(received)
        report = received.report
        log.info(
            "tlsrpt_inbound.received" if new else "tlsrpt_inbound.duplicate",
            report_id=report.report_id,
            organization=report.organization_name,
            domains=list(received.domains),
            via=received.via,
            failed=sum(p.failure_total for p in report.policies),
            ok=sum(p.successes for p in report.policies),
        )
        self.count(received.via, "new" if new else "duplicate")
        if new:
            for listener in self.listeners:
                try:
                    listener(received)
                except Exception as exc:  # the report is kept: an alert must not undo that
                    log.warning("tlsrpt_inbound.listener_failed", error=repr(exc))
        return new

    async def keep_async(self, received: ReceivedReport) -> bool:
        return await asyncio.to_thread(self.keep, received)

    def count(self, via: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.tlsrpt_received.labels(via=via, outcome=outcome).inc()
