"""Running the socketmap: inside `stsguard relay` (sharing its policy service, cache and
resolver) or on its own as `stsguard socketmap`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import dns.asyncresolver
import structlog
from prometheus_client import CollectorRegistry

from mtasts.service import PolicyService
from relay.config import Config, load_config
from relay.errors import ConfigError, StsguardError
from relay.metrics import start_metrics_server
from relay.resolver import dane_warning, make_resolver
from relay.socketmap.lookup import MapLookup
from relay.socketmap.metrics import SocketmapMetrics
from relay.socketmap.server import SocketmapServer
from relay.socketmap.service import SocketmapService
from relay.state.database import StateError
from relay.state.stores import open_state
from relay.tls import client_context

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def socketmap_running(
    listen: str,
    policies: PolicyService,
    resolver: dns.asyncresolver.Resolver,
    config: Callable[[], Config],
    registry: CollectorRegistry,
) -> AsyncIterator[SocketmapServer]:
    """The socketmap server on `listen` until the block ends."""
    lookup = MapLookup(policies, resolver, config)
    server = SocketmapServer(listen, SocketmapService(lookup, SocketmapMetrics(registry)))
    try:
        await server.start()
    except OSError as exc:
        await lookup.close()
        raise StsguardError(
            f"[socketmap].listen: cannot listen on {listen}: {exc.strerror or exc}"
        ) from None
    try:
        yield server
    finally:
        await server.stop()
        await lookup.close()


async def serve(config: Config, listen: str, config_path: Path | None = None) -> None:
    """`stsguard socketmap`: serve until SIGTERM or SIGINT; SIGHUP re-reads the overrides."""
    resolver = make_resolver(config.dns)
    try:
        state = open_state(config.state_url)
    except StateError as exc:
        raise StsguardError(f"[state].url: {exc}") from None
    policies = PolicyService(
        state.policies,
        resolver,
        client_context(config.tls.ca_file),
        https_port=config.mtasts.https_port,
        fetch_timeout=config.mtasts.fetch_timeout,
        refresh_interval=config.mtasts.refresh_interval,
        answer_ttl=config.mtasts.answer_ttl,
    )
    current = [config]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(current, config_path))
    registry = CollectorRegistry()
    metrics_server = None
    try:
        if config.relay.metrics_listen:
            metrics_server = start_metrics_server(config.relay.metrics_listen, registry)
        async with socketmap_running(listen, policies, resolver, lambda: current[0], registry):
            log.info("socketmap.started", listen=listen, state=state.url.redacted())
            dane_off = dane_warning(config.dns)
            if dane_off is not None:
                log.warning("socketmap.dane_unavailable", reason=dane_off)
            await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        state.close()
        log.info("socketmap.stopped")


def _reload(current: list[Config], path: Path | None) -> None:
    """SIGHUP: the new `[domains]` overrides apply to look-ups from now on."""
    if path is None:
        log.warning("socketmap.reload_skipped", reason="started without --config FILE")
        return
    try:
        current[0] = load_config(path)
    except ConfigError as exc:
        log.error("socketmap.reload_failed", error=str(exc), kept="the running config")
        return
    log.info("socketmap.reloaded", config=str(path))
