"""`stsguard relay`: the smarthost as one TaskGroup (intake, queue runner, TLS-RPT).

With ``[relay].intake_processes`` > 0 the intake runs in that many child processes
(`relay.intake.pool`) and this process delivers what they queue.

`Relay` builds every part from the one `Config` and owns their lifetimes; `run(args, config)` is the
CLI entry point, which stops cleanly on SIGTERM or SIGINT (the queue is on disk, nothing is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import httpx
import structlog

from mtasts.service import PolicyService
from relay import sd_notify
from relay.config import Config
from relay.delivery.deliverer import Deliverer
from relay.errors import ConfigError, StsguardError
from relay.intake.limits import raise_descriptor_limit
from relay.intake.pool import IntakePool
from relay.intake.server import Intake
from relay.metrics import Metrics, start_metrics_server
from relay.preflight import config_problems, dkim_problems, tlsrpt_identity_problem
from relay.queue.bounce import build_dsn, should_bounce
from relay.queue.runner import QueueRunner
from relay.queue.spool import REPORT_MAIL_FLAGS, MessageFlags, QueuedMessage, Spool
from relay.reports import CountedReportStore, report_settings
from relay.resolver import dane_warning, make_resolver
from relay.running import RunningMarker
from relay.state.database import StateError
from relay.state.stores import open_state
from relay.tls import client_context
from relay.version import stsguard_version
from tlsrpt_emit.schedule import Clients, ReportSender, ReportSettings
from tlsrpt_emit.sink import CountingSink
from tlsrpt_emit.store import ReportStore

log = structlog.get_logger(__name__)


class Relay:
    """Every part of the running smarthost, built from one config."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        config_path: Path | None = None,
    ) -> None:
        """`config_path` is the file `config` came from; intake processes read it too."""
        self.config = config
        self.clock = clock
        self.config_path = config_path
        state_dir = config.relay.state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StsguardError(f"[relay].state_dir: cannot create {state_dir}: {exc}") from None
        self.metrics = Metrics()
        self.spool = Spool(state_dir / "queue", clock=clock)
        self.resolver = make_resolver(config.dns)
        self.ssl_context = client_context(config.tls.ca_file)
        try:
            self.state = open_state(config.state_url, clock=clock)
        except StateError as exc:
            raise StsguardError(f"[state].url: {exc}") from None
        self.policy_store = self.state.policies
        self.policies = PolicyService(
            self.policy_store,
            self.resolver,
            self.ssl_context,
            https_port=config.mtasts.https_port,
            fetch_timeout=config.mtasts.fetch_timeout,
            refresh_interval=config.mtasts.refresh_interval,
            clock=clock,
            answer_ttl=config.mtasts.answer_ttl,
        )
        self.metrics.follow_policy_cache(lambda: self.policies.hits, lambda: self.policies.misses)
        self.history = self.state.history
        self.report_store = self.state.reports
        self.sink = CountingSink(
            self.report_store, clock=clock, flush_interval=float(config.tlsrpt.flush_interval)
        )
        self.deliverer = Deliverer(
            config,
            resolver=self.resolver,
            policy_service=self.policies,
            history_store=self.history,
            sink=self.sink,
            ssl_context=self.ssl_context,
            clock=clock,
            metrics=self.metrics,
        )
        self.runner = QueueRunner(
            config,
            self.spool,
            self.deliverer,
            bounce=self.bounce,
            metrics=self.metrics,
            clock=clock,
        )
        self.intake = Intake(config, self.spool, on_queued=self._queued)
        self.pool: IntakePool | None = None
        if config.relay.intake_processes:
            if config_path is None:
                raise StsguardError(
                    "[relay].intake_processes: the intake processes read the config file; "
                    "start the relay with --config FILE"
                )
            self.pool = IntakePool(
                config.relay.intake_processes,
                config_path,
                config.relay.listen_address,
                on_queued=self._queued_elsewhere,
            )

    def close(self) -> None:
        """Close the state store (after `running`; its stores stay readable until then)."""
        self.state.close()

    def _queued(self, message: QueuedMessage, data: bytes) -> None:
        self.metrics.accepted.inc()
        self.runner.submit(message, data)

    def _queued_elsewhere(self, queue_ids: list[str]) -> None:
        """Mail queued by the intake processes."""
        self.metrics.accepted.inc(len(queue_ids))
        for queue_id in queue_ids:
            self.runner.wake(queue_id)

    @property
    def listen_address(self) -> tuple[str, int]:
        return self.pool.address if self.pool is not None else self.intake.address

    async def _start_intake(self) -> None:
        try:
            if self.pool is not None:
                await self.pool.start()
            else:
                await self.intake.start()
        except BaseException as exc:
            if self.pool is not None:
                await self.pool.stop()  # the children started before the failure
            if isinstance(exc, OSError):
                raise StsguardError(
                    f"[relay].listen: cannot listen on {self.config.relay.listen}: "
                    f"{exc.strerror or exc}"
                ) from None
            raise

    async def submit_mail(self, mail_from: str, rcpts: list[str], data: bytes) -> None:
        """Queue our own TLS-RPT report mail: MTA-STS not applied, session not counted (RPT-10)."""
        queue_id = await asyncio.to_thread(
            self.spool.put, mail_from, rcpts, data, flags=REPORT_MAIL_FLAGS
        )
        self.runner.wake(queue_id)

    async def bounce(
        self, message: QueuedMessage, data: bytes, failed: list[tuple[str, str]]
    ) -> None:
        """Queue a DSN to the sender of `message` (never for a bounce or a report mail)."""
        if not should_bounce(message.mail_from, message.flags):
            log.info("queue.bounce_suppressed", queue_id=message.id, sender=message.mail_from)
            return
        dsn = build_dsn(
            message, data, failed, reporting_mta=self.config.relay.hostname, now=self.clock()
        )
        dsn_id = await asyncio.to_thread(
            self.spool.put, "", [message.mail_from], dsn, flags=MessageFlags(is_bounce=True)
        )
        self.metrics.bounced.inc(len(failed))
        log.warning("queue.bounced", queue_id=message.id, dsn_id=dsn_id, failed=len(failed))
        self.runner.wake(dsn_id)

    def _start_checks(self) -> ReportSettings | None:
        """The start-up checks (`relay.preflight`): an error stops the start, warnings are
        logged; TLS-RPT settings, or None while reports must not be sent."""
        problems = config_problems(self.config)
        for problem in problems:
            if problem.level == "error":
                raise ConfigError(problem.message)
        for problem in problems:
            log.warning("relay.config_warning", problem=problem.message)
        if not self.config.tlsrpt.enabled or tlsrpt_identity_problem(self.config):
            return None
        return report_settings(self.config)

    async def _check_dkim(self) -> None:
        for problem in await dkim_problems(self.config, self.resolver):
            log.warning("relay.config_warning", problem=problem.message)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        """Start intake, the queue runner and TLS-RPT; stop them all on the way out."""
        settings = self._start_checks()
        await self._start_intake()
        metrics_server = None
        post_timeout = float(self.config.tlsrpt.post_timeout)
        # trust_env=False: no proxy or CA settings from the environment; tlsrpt_emit resolves
        # the rua host through the relay's resolver and connects to its address itself.
        http = httpx.AsyncClient(
            verify=self.ssl_context, follow_redirects=False, trust_env=False, timeout=post_timeout
        )
        marker = RunningMarker(self.config.relay.state_dir)  # `stsguard tlsrpt send` asks for it
        try:
            if self.config.relay.metrics_listen:
                try:
                    metrics_server = start_metrics_server(
                        self.config.relay.metrics_listen, self.metrics.registry
                    )
                except OSError as exc:
                    raise StsguardError(
                        f"[relay].metrics_listen: cannot listen on "
                        f"{self.config.relay.metrics_listen}: {exc.strerror or exc}"
                    ) from None
            async with asyncio.TaskGroup() as tasks:
                children = [
                    tasks.create_task(self.runner.run(), name="queue-runner"),
                    tasks.create_task(self.sink.run(), name="tlsrpt-sink"),
                ]
                if settings is not None:
                    sender = ReportSender(
                        cast(ReportStore, CountedReportStore(self.report_store, self.metrics)),
                        settings=settings,
                        clients=Clients(
                            self.resolver,
                            http,
                            submit_mail=self.submit_mail,
                            post_timeout=post_timeout,
                        ),
                        clock=self.clock,
                        max_delay=float(self.config.tlsrpt.max_delay),
                    )
                    children.append(tasks.create_task(sender.run(), name="tlsrpt-sender"))
                if self.pool is not None:
                    children.append(tasks.create_task(self.pool.run(), name="intake-pool"))
                children.append(tasks.create_task(self._check_dkim(), name="dkim-check"))
                log.info(
                    "relay.started",
                    version=stsguard_version(),
                    config=str(self.config_path) if self.config_path else None,
                    listen=self.listen_address,
                    hostname=self.config.relay.hostname,
                    intake_processes=self.config.relay.intake_processes,
                    state_dir=str(self.config.relay.state_dir),
                    state=self.state.url.redacted(),
                )
                dane_off = dane_warning(self.config.dns)
                if dane_off is not None:
                    log.warning("relay.dane_unavailable", reason=dane_off)
                sd_notify.ready(f"listening on {self.listen_address[0]}:{self.listen_address[1]}")
                try:
                    yield self
                finally:
                    sd_notify.stopping()
                    await self.intake.stop()
                    for task in children:
                        task.cancel()
        finally:
            await self.intake.stop()
            if self.pool is not None:
                await self.pool.stop()
            await self.deliverer.close()
            await http.aclose()
            self.sink.flush()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            marker.close()
            log.info("relay.stopped")


async def serve(config: Config, config_path: Path | None = None) -> None:
    """Run the relay until SIGTERM or SIGINT."""
    raise_descriptor_limit()  # a service starts with a soft 1,024; README "Limits and abuse"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    relay = Relay(config, config_path=config_path)
    try:
        async with relay.running():
            await stop.wait()
    finally:
        relay.close()
