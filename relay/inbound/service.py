"""`[tlsrpt_inbound]` in the relay: the https endpoint when `listen` is set, the Maildir read
every `MAILDIR_INTERVAL` seconds when `maildir` is set, both keeping reports in one store; alerts
on what they show, and notice mails to `notify` handed to the relay's queue."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import structlog

from relay.config import TlsrptInboundConfig
from relay.config_values import parse_hostport
from relay.inbound.alerting import Alerter
from relay.inbound.https import ReportEndpoint
from relay.inbound.maildir import scan_maildir
from relay.inbound.taking import ReportKeeper
from relay.metrics import Metrics
from relay.tls import report_endpoint_context
from tlsrpt_emit.alerts import Alert, alert_mail
from tlsrpt_emit.errors import ReceivedStoreError
from tlsrpt_emit.inbound import ReceivedReportStore

log = structlog.get_logger(__name__)

MAILDIR_INTERVAL = 60.0
MAX_NOTICES = 100  # notice mails waiting to be queued; more are dropped (and logged)

SubmitMail = Callable[[str, list[str], bytes], Awaitable[None]]


class InboundReports:
    """The ways reports about our domains come in, as the config says."""

    def __init__(
        self,
        cfg: TlsrptInboundConfig,
        store: ReceivedReportStore,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        maildir_interval: float = MAILDIR_INTERVAL,
        submit: SubmitMail | None = None,
        sender: str = "",
    ) -> None:
        self.cfg = cfg
        self.keeper = ReportKeeper(store, metrics=metrics)
        self.clock = clock
        self.maildir_interval = maildir_interval
        self.submit = submit
        self.sender = sender
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notices: asyncio.Queue[Alert] = asyncio.Queue(MAX_NOTICES)
        self.keeper.listeners.append(
            Alerter(
                store,
                cfg.domains,
                days=cfg.alert_days,
                failure_share=cfg.alert_failure_percent / 100.0,
                metrics=metrics,
                notify=self._notify if cfg.notify and submit is not None else None,
                clock=clock,
            )
        )
        self.endpoint: ReportEndpoint | None = None
        if cfg.listen:
            self.endpoint = ReportEndpoint(
                parse_hostport(cfg.listen, "[tlsrpt_inbound].listen"),
                report_endpoint_context(cfg.tls_cert_file, cfg.tls_key_file),
                self.keeper,
                cfg.domains,
                clock=clock,
            )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[InboundReports]:
        self._loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            if self.endpoint is not None:
                await stack.enter_async_context(self.endpoint.running())
            yield self

    def scan(self) -> None:
        """Read the Maildir once (blocking: run it in a thread)."""
        if not self.cfg.maildir:
            return
        try:
            result = scan_maildir(
                Path(self.cfg.maildir), self.keeper, self.cfg.domains, clock=self.clock
            )
        except (OSError, ReceivedStoreError) as exc:
            log.warning("tlsrpt_inbound.maildir_failed", maildir=self.cfg.maildir, error=str(exc))
            return
        if result.new or result.refused:
            log.info(
                "tlsrpt_inbound.maildir_read",
                new=result.new,
                duplicates=result.duplicates,
                refused=result.refused,
            )

    async def run(self) -> None:
        """Read the Maildir now and every `maildir_interval` seconds until cancelled."""
        if not self.cfg.maildir:
            return
        while True:
            await asyncio.to_thread(self.scan)
            await asyncio.sleep(self.maildir_interval)

    def _notify(self, alert: Alert) -> None:
        """From the thread that kept the report: queue the notice for the event loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._queue_notice, alert)

    def _queue_notice(self, alert: Alert) -> None:
        if self._notices.full():
            log.warning("tlsrpt_inbound.notice_dropped", domain=alert.domain, kind=alert.kind)
            return
        self._notices.put_nowait(alert)

    async def send_notices(self) -> None:
        """Queue a notice mail for each alert, until cancelled (the mail goes through the relay)."""
        while True:
            alert = await self._notices.get()
            if self.submit is None:
                continue
            mail = alert_mail(alert, sender=self.sender, to=self.cfg.notify, now=self.clock())
            try:
                await self.submit(self.sender, [self.cfg.notify], mail)
            except Exception as exc:  # a notice must not end the relay's TaskGroup
                log.warning("tlsrpt_inbound.notice_failed", domain=alert.domain, error=repr(exc))
