"""SMTP intake: `Intake` starts and stops a listening server inside the running event loop, so
it lives in the relay's TaskGroup; each connection is a `relay.intake.session` session whose
protocol decisions are `relay.intake.handler.IntakeHandler`'s (accept mail from allowed clients,
check it, spool it, answer 250 only once it is on disk). Delivery is not started here;
`on_queued(message, data)` tells whoever cares.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP

from relay.config import Config, RelayConfig
from relay.config_values import host_port
from relay.errors import ConfigError
from relay.intake.auth import PasswordAuthenticator, load_auth_file
from relay.intake.handler import IntakeHandler, OnQueued
from relay.intake.limits import BASE_RESERVE, connection_budget, raise_descriptor_limit
from relay.intake.message import bare_line_end as bare_line_end
from relay.intake.message import received_header as received_header
from relay.intake.message import tls_required_no as tls_required_no
from relay.intake.rules import SessionRules
from relay.intake.rules import client_allowed as client_allowed
from relay.intake.rules import parse_networks as parse_networks
from relay.intake.session import _IntakeSMTP as _IntakeSMTP  # tests use it from here
from relay.queue.spool import Spool
from relay.tls import pem_pair_problem

_log = structlog.get_logger("relay.intake.server")


def auth_tls_problem(config: RelayConfig) -> str | None:
    """Why `[relay].auth_file` cannot be used as configured (AUTH is offered only over TLS), or
    None."""
    if config.auth_file and not (config.tls_cert_file or config.tls_key_file):
        return (
            "[relay].auth_file: AUTH is offered only over TLS; set tls_cert_file and "
            "tls_key_file too"
        )
    return None


def server_tls_context(config: RelayConfig) -> ssl.SSLContext | None:
    """The inbound STARTTLS context, or None when no certificate is configured."""
    if not (config.tls_cert_file or config.tls_key_file):
        return None
    if not (config.tls_cert_file and config.tls_key_file):
        raise ConfigError("[relay].tls_cert_file and tls_key_file must be set together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        why = pem_pair_problem(config.tls_cert_file, config.tls_key_file) or str(exc)
        raise ConfigError(
            f"[relay].tls_cert_file: cannot load certificate and key: {why}"
        ) from None
    return ctx


class Intake:
    """The listening SMTP intake on ``[relay].listen``, created in the running event loop.

    In the relay: ``tg.create_task(intake.serve())``; in tests: ``async with intake.running():``.
    """

    def __init__(
        self,
        config: Config,
        spool: Spool,
        *,
        on_queued: OnQueued | None = None,
        clock: Callable[[], float] = time.time,
        listen: tuple[str, int] | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """`listen` overrides ``[relay].listen`` (tests pass port 0 for a free port); `sock` is a
        listening socket to serve instead (an intake process shares its parent's)."""
        relay = config.relay
        self.listen = listen or relay.listen_address
        self.sock = sock
        self.config = config
        self.handler = IntakeHandler(relay, spool, on_queued=on_queued, clock=clock)
        self.tls_context = server_tls_context(relay)
        self.authenticator: PasswordAuthenticator | None = None
        if relay.auth_file:
            if (problem := auth_tls_problem(relay)) is not None:
                raise ConfigError(problem)
            self.authenticator = PasswordAuthenticator(load_auth_file(relay.auth_file))
        self.rules = SessionRules.from_config(relay)
        self._server: asyncio.Server | None = None
        self._previous_handler: Any = None
        self.descriptor_limit = 0  # the soft RLIMIT_NOFILE once started
        self._hard_limit = 0

    def _protocol(self) -> SMTP:
        relay = self.config.relay
        return _IntakeSMTP(
            self.handler,
            rules=self.rules,
            data_size_limit=relay.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=relay.hostname,
            ident="stsguard ESMTP",
            tls_context=self.tls_context,
            auth_require_tls=True,
            authenticator=self.authenticator,
            auth_exclude_mechanism=[] if self.authenticator else ["LOGIN", "PLAIN"],
            loop=asyncio.get_running_loop(),
        )

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens (the real port when the config said port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("intake is not running")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def _fit_descriptors(self) -> None:
        """Raise the soft descriptor limit, then keep `max_connections` within what it leaves."""
        self.descriptor_limit, self._hard_limit = raise_descriptor_limit()
        self.rules = SessionRules.from_config(
            self.config.relay, max_connections=self._budget(self.config)
        )

    def _budget(self, config: Config) -> int:
        wanted = config.relay.max_connections
        if not self.descriptor_limit:
            return wanted  # not started yet
        reserve = BASE_RESERVE + 2 * config.delivery.workers
        budget = connection_budget(wanted, self.descriptor_limit, reserve)
        if budget < wanted:
            _log.warning(
                "intake.max_connections_lowered",
                max_connections=wanted,
                now=budget,
                descriptor_limit=self.descriptor_limit,
                hard_limit=self._hard_limit,
            )
        return budget

    def reconfigure(self, config: Config) -> None:
        """Take the limits, ``accept_networks``, ``max_recipients`` and ``tls_required_no`` of a
        re-read config (SIGHUP) for new sessions and commands; open sessions stay counted.
        ``listen``, the certificate and the auth file need a restart."""
        self.config = config
        self.handler.config = config.relay
        self.handler.networks = parse_networks(config.relay.accept_networks)
        fresh = SessionRules.from_config(config.relay, max_connections=self._budget(config))
        rules = self.rules
        rules.hostname = fresh.hostname
        rules.networks = fresh.networks
        rules.idle_timeout = fresh.idle_timeout
        rules.session_timeout = fresh.session_timeout
        rules.command_deadline = fresh.command_deadline
        rules.min_data_rate = fresh.min_data_rate
        rules.max_junk_commands = fresh.max_junk_commands
        rules.auth_failures_per_connection = fresh.auth_failures_per_connection
        rules.requiretls_loopback = fresh.requiretls_loopback
        rules.auth_failures.limit = fresh.auth_failures.limit
        counted = rules.connections
        counted.max_total = fresh.connections.max_total
        counted.max_per_ip = fresh.connections.max_per_ip
        counted.max_outside = fresh.connections.max_outside

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """One log line, no traceback, for an accept that ran out of descriptors or memory:
        asyncio stops accepting for a second and tries again; sessions already open go on."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (
            errno.EMFILE,
            errno.ENFILE,
            errno.ENOBUFS,
            errno.ENOMEM,
        ):
            _log.warning("intake.accept_backoff", error=errno.errorcode.get(exc.errno or 0, ""))
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    async def start(self) -> None:
        host, port = self.listen
        loop = asyncio.get_running_loop()
        self._fit_descriptors()
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        if self.sock is not None:
            self._server = await loop.create_server(self._protocol, sock=self.sock)
        else:
            self._server = await loop.create_server(self._protocol, host, port)
        connections = self.rules.connections
        _log.info(
            "intake.listening",
            address=host_port(*self.address),
            descriptor_limit=self.descriptor_limit,
            max_connections=connections.max_total,
            max_connections_outside=connections.max_outside,
            max_connections_per_ip=connections.max_per_ip,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None
            loop = asyncio.get_running_loop()
            if loop.get_exception_handler() == self._loop_exception:
                loop.set_exception_handler(self._previous_handler)

    async def serve(self) -> None:
        """Listen until cancelled (a TaskGroup member); starts listening unless `start` did."""
        if self._server is None:
            await self.start()
        try:
            assert self._server is not None
            await self._server.serve_forever()
        finally:
            await self.stop()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Intake]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()
