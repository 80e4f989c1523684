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

from detect.errors import PrevalenceStoreError
from detect.prevalence import MemoryPrevalenceStore
from mtasts.service import PolicyService
from relay import sd_notify
from relay.config import Config, default_contact_info, load_config
from relay.config_values import host_port
from relay.delivery.deliverer import Deliverer
from relay.errors import ConfigError, StsguardError
from relay.inbound.service import InboundReports
from relay.intake.limits import raise_descriptor_limit
from relay.intake.pool import IntakePool
from relay.intake.server import Intake
from relay.metrics import Metrics
from relay.preflight import config_problems
from relay.prevalence import PrevalenceRecorder
from relay.queue.control import ControlServer, socket_path
from relay.queue.runner import QueueRunner
from relay.queue.spool import REPORT_MAIL_FLAGS, QueuedMessage, Spool
from relay.reload_keys import needs_restart
from relay.reports import CountedReportStore
from relay.resolver import dane_warning, make_resolver
from relay.running import RunningMarker
from relay.socketmap.run import socketmap_running
from relay.startup import (
    check_dkim,
    intake_processes,
    metrics_endpoint,
    start_checks,
    state_store,
)
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
        self.state = state_store(config, clock, self.metrics)
        self.policy_store = self.state.policies
        self.policies = self._policy_service()
        self.metrics.follow_policy_cache(lambda: self.policies.hits, lambda: self.policies.misses)
        self.history = self.state.history
        self.report_store = self.state.reports
        self.sink = CountingSink(
            self.report_store, clock=clock, flush_interval=float(config.tlsrpt.flush_interval)
        )
        self.prevalence = self._prevalence_recorder()
        assert self.state.received is not None
        self.inbound = InboundReports(
            config.tlsrpt_inbound,
            self.state.received,
            metrics=self.metrics,
            clock=clock,
            submit=self.submit_notice,
            sender=default_contact_info(config),
        )
        self.deliverer = self._deliverer()
        self.runner = QueueRunner(
            config, self.spool, self.deliverer, metrics=self.metrics, clock=clock
        )
        self.control = ControlServer(socket_path(state_dir), self.spool, self.runner, clock=clock)
        self.intake = Intake(config, self.spool, on_queued=self._queued)
        self.intake_processes = intake_processes(config, config_path)
        self.pool = self._intake_pool()

    def _intake_pool(self) -> IntakePool | None:
        """The intake processes, or None when the intake runs in this process."""
        if not self.intake_processes:
            return None
        assert self.config_path is not None
        return IntakePool(
            self.intake_processes,
            self.config_path,
            self.config.relay.listen_address,
            on_queued=self._queued_elsewhere,
        )

    def _deliverer(self) -> Deliverer:
        """The deliverer, sharing this relay's resolver, policies, state and counters."""
        return Deliverer(
            self.config,
            resolver=self.resolver,
            policy_service=self.policies,
            history_store=self.history,
            sink=self.sink,
            ssl_context=self.ssl_context,
            clock=self.clock,
            metrics=self.metrics,
            prevalence=self.prevalence,
        )

    def _policy_service(self) -> PolicyService:
        """MTA-STS policies through the state's policy cache (`[mtasts]`)."""
        mtasts = self.config.mtasts
        return PolicyService(
            self.policy_store,
            self.resolver,
            self.ssl_context,
            https_port=mtasts.https_port,
            fetch_timeout=mtasts.fetch_timeout,
            refresh_interval=mtasts.refresh_interval,
            clock=self.clock,
            answer_ttl=mtasts.answer_ttl,
        )

    def _prevalence_recorder(self) -> PrevalenceRecorder:
        """Downgrade prevalence, summed into the state store (in memory where it has none)."""
        return PrevalenceRecorder(
            self.state.prevalence or MemoryPrevalenceStore(),
            clock=self.clock,
            flush_interval=float(self.config.tlsrpt.flush_interval),
            keep_days=self.config.detect.prevalence_days,
            news_days=self.config.detect.history_days,
            metrics=self.metrics,
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

    async def _stop_intake(self) -> None:
        await self.intake.stop()
        if self.pool is not None:
            await self.pool.stop()

    async def submit_mail(self, mail_from: str, rcpts: list[str], data: bytes) -> None:
        """Queue our own TLS-RPT report mail: MTA-STS not applied, session not counted (RPT-10)."""
        queue_id = await asyncio.to_thread(
            self.spool.put, mail_from, rcpts, data, flags=REPORT_MAIL_FLAGS
        )
        self.runner.wake(queue_id)

    async def submit_notice(self, mail_from: str, rcpts: list[str], data: bytes) -> None:
        """Queue a notice mail of ours (a TLS report alert), delivered as any other mail."""
        queue_id = await asyncio.to_thread(self.spool.put, mail_from, rcpts, data)
        self.runner.wake(queue_id)

    def reload(self) -> bool:
        """SIGHUP: read the config file again. The new config applies to new sessions and
        deliveries; a key that only takes effect at start is named in a warning; an invalid
        file keeps the old config (one error line)."""
        if self.config_path is None:
            log.warning("relay.reload_skipped", reason="started without --config FILE")
            return False
        sd_notify.reloading()
        try:
            new = load_config(self.config_path)
            # The start-up checks hold for a reloaded file too (no open relay by a SIGHUP).
            errors = [p.message for p in config_problems(new) if p.level == "error"]
            if errors:
                raise ConfigError(errors[0])
        except ConfigError as exc:
            log.error("relay.reload_failed", error=str(exc), kept="the running config")
            sd_notify.ready()
            return False
        restart = needs_restart(self.config, new)
        self.config = new
        self.runner.reconfigure(new)
        self.deliverer.config = new
        self.deliverer.negotiator.config = new  # port, timeouts, history_days per session
        self.prevalence.keep_days = new.detect.prevalence_days
        if self.pool is None:
            self.intake.reconfigure(new)  # limits, accept_networks, tls_required_no, ...
        else:
            self.pool.reload()  # each intake process re-reads the file (SIGHUP)
        if restart:
            log.warning("relay.reload_needs_restart", keys=restart)
        log.info("relay.reloaded", config=str(self.config_path))
        sd_notify.ready()
        return True

    def _socketmap(self) -> contextlib.AbstractAsyncContextManager[object]:
        """The Postfix policy map on `[socketmap].listen`, sharing this relay's policy service
        and resolver; nothing when it is not set."""
        if not self.config.socketmap.listen:
            return contextlib.nullcontext()
        return socketmap_running(
            self.config.socketmap.listen,
            self.policies,
            self.resolver,
            lambda: self.config,
            self.metrics.registry,
        )

    def _report_sender(self, settings: ReportSettings, http: httpx.AsyncClient) -> ReportSender:
        """The daily TLS-RPT sender: POST with `http`, mail through this relay's own queue."""
        return ReportSender(
            cast(ReportStore, CountedReportStore(self.report_store, self.metrics)),
            settings=settings,
            clients=Clients(
                self.resolver,
                http,
                submit_mail=self.submit_mail,
                post_timeout=float(self.config.tlsrpt.post_timeout),
            ),
            clock=self.clock,
            max_delay=float(self.config.tlsrpt.max_delay),
        )

    def _log_started(self) -> None:
        log.info(
            "relay.started",
            version=stsguard_version(),
            config=str(self.config_path) if self.config_path else None,
            listen=host_port(*self.listen_address),
            hostname=self.config.relay.hostname,
            intake_processes=self.intake_processes,
            state_dir=str(self.config.relay.state_dir),
            state=self.state.url.redacted(),
        )
        dane_off = dane_warning(self.config.dns)
        if dane_off is not None:
            log.warning("relay.dane_unavailable", reason=dane_off)

    def _start_tasks(
        self, tasks: asyncio.TaskGroup, settings: ReportSettings | None, http: httpx.AsyncClient
    ) -> list[asyncio.Task[None]]:
        """The relay's long-running tasks in `tasks` (the TLS-RPT sender only with `settings`)."""
        children = [
            tasks.create_task(self.runner.run(), name="queue-runner"),
            tasks.create_task(self.sink.run(), name="tlsrpt-sink"),
            tasks.create_task(self.prevalence.run(), name="prevalence"),
            tasks.create_task(self.inbound.run(), name="tlsrpt-inbound-maildir"),
            tasks.create_task(self.inbound.send_notices(), name="tlsrpt-inbound-notices"),
        ]
        if settings is not None:
            sender = self._report_sender(settings, http)
            children.append(tasks.create_task(sender.run(), name="tlsrpt-sender"))
        if self.pool is not None:
            children.append(tasks.create_task(self.pool.run(), name="intake-pool"))
        children.append(
            tasks.create_task(check_dkim(self.config, self.resolver), name="dkim-check")
        )
        return children

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        """Start intake, the queue runner and TLS-RPT; stop them all on the way out."""
        settings = start_checks(self.config)
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
            metrics_server = metrics_endpoint(self.config, self.metrics.registry)
            async with asyncio.TaskGroup() as tasks:
                children = self._start_tasks(tasks, settings, http)
                self._log_started()
                sd_notify.ready(f"listening on {self.listen_address[0]}:{self.listen_address[1]}")
                try:
                    await self.control.start()
                    async with self._socketmap(), self.inbound.running():
                        yield self
                finally:
                    sd_notify.stopping()
                    # Stop: no new mail, let the deliveries in flight finish (and be written).
                    await self._stop_intake()
                    await self.control.stop()
                    finished = await self.runner.drain(float(self.config.relay.stop_timeout))
                    log.info("relay.stopping", deliveries_finished=finished)
                    for task in children:
                        task.cancel()
        finally:
            await self.control.stop()
            await self.intake.stop()
            if self.pool is not None:
                await self.pool.stop()
            await self.deliverer.close()
            await http.aclose()
            self.sink.flush()
            with contextlib.suppress(PrevalenceStoreError):
                self.prevalence.flush()  # best effort: counts, never mail
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            marker.close()
            log.info("relay.stopped")


async def serve(config: Config, config_path: Path | None = None) -> None:
    """Run the relay until SIGTERM or SIGINT (then stop gracefully); SIGHUP reloads."""
    raise_descriptor_limit()  # a service starts with a soft 1,024; README "Limits and abuse"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    relay = Relay(config, config_path=config_path)
    loop.add_signal_handler(signal.SIGHUP, relay.reload)
    try:
        async with relay.running():
            await stop.wait()
            log.info("relay.stop_requested")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        relay.close()
