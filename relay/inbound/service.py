"""`[tlsrpt_inbound]` in the relay: the https endpoint when `listen` is set, the Maildir read
every `MAILDIR_INTERVAL` seconds when `maildir` is set, both keeping reports in one store."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog

from relay.config import TlsrptInboundConfig, parse_hostport
from relay.errors import ConfigError
from relay.inbound.https import ReportEndpoint
from relay.inbound.maildir import scan_maildir
from relay.inbound.taking import ReportKeeper
from relay.metrics import Metrics
from tlsrpt_emit.errors import ReceivedStoreError
from tlsrpt_emit.inbound import ReceivedReportStore

log = structlog.get_logger(__name__)

MAILDIR_INTERVAL = 60.0


def endpoint_tls_context(cfg: TlsrptInboundConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[tlsrpt_inbound].tls_cert_file: cannot load certificate and key: {exc}"
        ) from None
    return ctx


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
    ) -> None:
        self.cfg = cfg
        self.keeper = ReportKeeper(store, metrics=metrics)
        self.clock = clock
        self.maildir_interval = maildir_interval
        self.endpoint: ReportEndpoint | None = None
        if cfg.listen:
            self.endpoint = ReportEndpoint(
                parse_hostport(cfg.listen, "[tlsrpt_inbound].listen"),
                endpoint_tls_context(cfg),
                self.keeper,
                cfg.domains,
                clock=clock,
            )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[InboundReports]:
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
