"""What can stop the relay's start or warn about it: the config checks (`relay.preflight`), the
DKIM key against DNS, and the parts whose failure to open is a one-line error (the state store,
the metrics endpoint, the intake processes' count)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import dns.asyncresolver
import structlog
from prometheus_client import CollectorRegistry

from relay.config import Config
from relay.config_values import intake_process_count, usable_cores
from relay.errors import ConfigError, StsguardError
from relay.metrics import Metrics, start_metrics_server
from relay.preflight import config_problems, dkim_problems, tlsrpt_identity_problem
from relay.reports import report_settings
from relay.state.database import StateError
from relay.state.failed_writes import FailedWrites
from relay.state.stores import State, open_state
from tlsrpt_emit.schedule import ReportSettings

log = structlog.get_logger(__name__)


def start_checks(config: Config) -> ReportSettings | None:
    """The start-up checks (`relay.preflight`): an error stops the start, warnings are
    logged; TLS-RPT settings, or None while reports must not be sent."""
    problems = config_problems(config)
    for problem in problems:
        if problem.level == "error":
            raise ConfigError(problem.message)
    for problem in problems:
        log.warning("relay.config_warning", problem=problem.message)
    if not config.tlsrpt.enabled or tlsrpt_identity_problem(config):
        return None
    return report_settings(config)


async def check_dkim(config: Config, resolver: dns.asyncresolver.Resolver) -> None:
    """The DKIM key against DNS, once after start: advice, never a reason to stop."""
    try:
        problems = await dkim_problems(config, resolver)
    except Exception as exc:  # a check must not end the relay's TaskGroup
        log.warning("relay.config_warning", problem=f"DKIM check failed: {exc!r}")
        return
    for problem in problems:
        log.warning("relay.config_warning", problem=problem.message)


def metrics_endpoint(config: Config, registry: CollectorRegistry) -> WSGIServer | None:
    """The metrics endpoint on `[relay].metrics_listen`; None when it is not set."""
    listen = config.relay.metrics_listen
    if not listen:
        return None
    try:
        return start_metrics_server(listen, registry)
    except OSError as exc:
        raise StsguardError(
            f"[relay].metrics_listen: cannot listen on {listen}: {exc.strerror or exc}"
        ) from None


def state_store(config: Config, clock: Callable[[], float], metrics: Metrics) -> State:
    """The state store of `[state].url`; a write it cannot make is counted in `metrics`."""
    try:
        return open_state(
            config.state_url, clock=clock, failed_writes=FailedWrites(metrics.count_state_error)
        )
    except StateError as exc:
        raise StsguardError(f"[state].url: {exc}") from None


def intake_processes(config: Config, config_path: Path | None) -> int:
    """How many intake processes to start (0: the intake runs in this process). They read the
    config file, so there are none without one."""
    count = intake_process_count(config.relay.intake_processes, usable_cores())
    if count and config_path is None:
        if config.relay.intake_processes != "auto":
            raise StsguardError(
                "[relay].intake_processes: the intake processes read the config file; "
                "start the relay with --config FILE"
            )
        return 0  # "auto" without a file to hand them: one process
    return count
