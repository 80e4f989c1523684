"""SMTP intake: accept mail from allowed clients, check it, spool it, answer 250 only once it is
on disk. Delivery is not started here; `on_queued(message, data)` tells whoever cares.

Two parts kept apart: `IntakeHandler` (aiosmtpd hooks: the protocol decisions) and `Intake` (start
and stop a listening server inside the running event loop, so it lives in the relay's TaskGroup).

Choices, with reasons:

- Relaying (RFC 5321 section 3.6.2 / 7.1): only clients in ``[relay].accept_networks`` or clients
  that authenticated may give recipients; anyone else gets ``550 5.7.1`` per RCPT, so DATA never
  starts and nothing is queued.
- Smuggling (TLS-06): aiosmtpd ends DATA only on ``<CRLF>.<CRLF>``, so ``<LF>.<LF>``,
  ``<CRLF>.<LF>`` and ``<LF>.<CRLF>`` stay inside the message here. A downstream server that takes
  one of those as the end would split it in two, so a message with any bare LF or bare CR (RFC 5321
  section 2.3.8 forbids both) is *rejected* with ``550 5.5.2``, as Postfix's
  ``smtpd_forbid_bare_newline = reject`` does. Rejecting rather than normalising keeps what we
  forward byte-identical to what we accepted, and real MTAs send CRLF only.
- TLS-04 inbound: aiosmtpd (1.4.6 and later) throws away plaintext buffered behind STARTTLS when
  the handshake completes (tested).
- EHLO: SIZE (aiosmtpd enforces it at MAIL and DATA with 552), 8BITMIME (we take bytes, not text),
  SMTPUTF8 (aiosmtpd accepts UTF-8 addresses; the flag goes to the spool so delivery asks the next
  hop for it), PIPELINING (aiosmtpd reads commands from one stream in order, so a pipelined batch is
  answered correctly; aiosmtpd does not advertise it by itself), STARTTLS when a certificate is
  configured, AUTH only after STARTTLS and only with ``[relay].auth_file``.
- Sessions (`relay.intake.session`, README "Limits and abuse"): connection caps, idle and session
  time limits, the junk-command budget, control characters and invalid UTF-8 in commands (``501``),
  a second STARTTLS (``503``), AUTH throttling; each over-limit client hears ``421 4.7.0``.
- Addresses (`relay.intake.hygiene`): MAIL and RCPT paths are checked before anything is kept
  (``553 5.1.3``; non-ASCII without SMTPUTF8 ``553 5.6.7``); more than ``max_recipients``
  recipients get ``452 4.5.3``. The ``Received:`` header is built from checked values only.
- ``TLS-Required: No`` (RFC 8689 section 5) becomes the message's flag as
  ``[relay].tls_required_no`` says: from any client that may relay, only from authenticated ones,
  or never.
- REQUIRETLS (RFC 8689): offered in EHLO and accepted at MAIL only over TLS
  (`relay.intake.session`); the message's ``requiretls`` flag then outranks
  ``TLS-Required: No`` (section 4.1). With
  ``[relay].requiretls_loopback`` a plaintext loopback client in ``accept_networks`` may use it
  too, and its ``Require-TLS-ESMTP: yes`` header (Postfix 3.11's ``requiretls_esmtp_header``,
  which carries the request across a content-filter hop) counts as the parameter.
- Any other failure inside a hook answers ``451 4.3.0`` and logs the traceback; the client never
  sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.parser
import email.policy
import errno
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiosmtpd.smtp import (
    SMTP,
    Envelope,
    Session,
    TLSSetupException,
)

from relay.config import Config, RelayConfig, host_port
from relay.errors import ConfigError, SpoolError
from relay.intake.auth import PasswordAuthenticator, load_auth_file
from relay.intake.group_commit import GroupCommit
from relay.intake.hygiene import address_problem
from relay.intake.limits import BASE_RESERVE, connection_budget, raise_descriptor_limit
from relay.intake.session import SessionRules, _table_names, requiretls_offered
from relay.intake.session import _IntakeSMTP as _IntakeSMTP  # tests use it from here
from relay.intake.session import client_allowed as client_allowed
from relay.intake.session import parse_networks as parse_networks
from relay.intake.trace import message_trace
from relay.queue.spool import MessageFlags, QueuedMessage, Spool, new_queue_id
from relay.tls import pem_pair_problem

_log = structlog.get_logger("relay.intake.server")

_BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_HELO_SAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")

# Told of each message once it is durable: its envelope and the bytes as queued.
OnQueued = Callable[[QueuedMessage, bytes], None]


# --- pure checks ---------------------------------------------------------------------------


def bare_line_end(data: bytes) -> int | None:
    """Offset of the first CR or LF that is not part of a CRLF pair, or None (TLS-06)."""
    pairs = data.count(b"\r\n")
    if data.count(b"\r") == pairs == data.count(b"\n"):
        return None  # every CR and every LF is in a pair (pairs cannot overlap): the usual case
    m = _BARE_LINE_END.search(data)
    return m.start() if m else None


def _header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def require_tls_esmtp(data: bytes) -> bool:
    """True when the message has a ``Require-TLS-ESMTP: yes`` header (Postfix 3.11 adds it to a
    message received with REQUIRETLS, so the request survives a hop without the parameter)."""
    block = _header_block(data)
    if b"require-tls-esmtp" not in block.lower():
        return False
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    return any(str(v).strip().lower() == "yes" for v in headers.get_all("Require-TLS-ESMTP", []))


def tls_required_no(data: bytes) -> bool:
    """True when the message has a ``TLS-Required: No`` header (RFC 8689 section 5)."""
    block = _header_block(data)
    if b"tls-required" not in block.lower():
        return False  # nearly every message: no need to parse the headers
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    return any(str(v).strip().lower() == "no" for v in headers.get_all("TLS-Required", []))


def received_header(
    *,
    helo: str,
    client: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    rcpts: list[str],
    now: float,
) -> bytes:
    """Our ``Received:`` trace line (RFC 5321 section 4.4); `for` only with a single recipient."""
    helo_text = _HELO_SAFE.sub("", helo)[:255] or "unknown"
    when = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    # Only checked addresses get here; `for` is left out all the same for anything unprintable.
    recipient = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 and rcpts[0].isprintable() else ""
    line = (
        f"Received: from {helo_text} ([{client}])\r\n"
        f"\tby {hostname} (stsguard) with {protocol} id {queue_id}{recipient};\r\n"
        f"\t{when}\r\n"
    )
    return line.encode("utf-8", "surrogateescape")


def _protocol(session: Session) -> str:
    """RFC 3848 'with' keyword."""
    if not session.extended_smtp:
        return "SMTP"
    return "ESMTP" + ("S" if session.ssl else "") + ("A" if session.authenticated else "")


# --- aiosmtpd hooks --------------------------------------------------------------------------


class IntakeHandler:
    """The aiosmtpd handler: relay access, smuggling check, trace header, spool, reply."""

    def __dir__(self) -> list[str]:
        return _table_names(self)

    def __init__(
        self,
        config: RelayConfig,
        spool: Spool,
        *,
        on_queued: OnQueued | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.spool = spool
        self.commits = GroupCommit(spool)
        self.on_queued = on_queued
        self.clock = clock
        self.networks = parse_networks(config.accept_networks)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd prints "250-AUTH " even with no mechanism left; say nothing instead.
        lines = [r for r in responses if r.strip() != "250-AUTH"]
        lines.insert(len(lines) - 1, "250-PIPELINING")
        if self._offers_requiretls(session):
            lines.insert(len(lines) - 1, "250-REQUIRETLS")  # RFC 8689 section 2
        return lines

    def _offers_requiretls(self, session: Session, *, tls: bool | None = None) -> bool:
        """REQUIRETLS on this session; `tls=False` asks for the loopback exemption alone."""
        return requiretls_offered(
            tls=session.ssl is not None if tls is None else tls,
            client=_client(session),
            networks=self.networks,
            loopback_ok=self.config.requiretls_loopback,
        )

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        smtputf8 = "SMTPUTF8" in options  # aiosmtpd gives the options upper-cased
        problem = address_problem(address, smtputf8=smtputf8, null_ok=True)
        if problem is not None:
            _log.info(
                "intake.address_refused", client=_client(session), command="MAIL", reply=problem
            )
            return problem
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        client = _client(session)
        problem = address_problem(address, smtputf8=bool(envelope.smtp_utf8), null_ok=False)
        if problem is not None:
            _log.info("intake.address_refused", client=client, command="RCPT", reply=problem)
            return problem
        if not (session.authenticated or client_allowed(client, self.networks)):
            _log.info("intake.relay_denied", client=client, rcpt=address)
            return "550 5.7.1 Relaying denied: client not in accept_networks"
        if address not in envelope.rcpt_tos:
            if len(envelope.rcpt_tos) >= self.config.max_recipients:
                # RFC 5321 section 4.5.3.1.10: the client sends the rest in another message.
                _log.info("intake.address_refused", client=client, limit="max_recipients")
                return "452 4.5.3 Too many recipients"
            envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        client = _client(session)
        offset = bare_line_end(data)
        if offset is not None:
            _log.warning(
                "intake.smuggling_rejected",
                client=client,
                offset=offset,
                mail_from=envelope.mail_from,
            )
            return "550 5.5.2 Message contains a bare CR or LF; send CRLF line ends only"
        mail_from = str(envelope.mail_from or "")
        if mail_from == "<>":
            mail_from = ""  # the null sender (aiosmtpd keeps the brackets); spooled as ""
        rcpts = list(envelope.rcpt_tos)
        options = {o.upper() for o in envelope.mail_options}
        requiretls = "REQUIRETLS" in options or (
            self._offers_requiretls(session, tls=False) and require_tls_esmtp(data)
        )
        flags = MessageFlags(
            # RFC 8689 4.1: with REQUIRETLS the TLS-Required header field is ignored.
            tls_required_no=not requiretls and self._tls_required_no(data, session, client),
            smtputf8="SMTPUTF8" in options,
            eight_bit="BODY=8BITMIME" in options,
            requiretls=requiretls,
        )
        queue_id = new_queue_id()
        trace = received_header(
            helo=str(session.host_name or ""),
            client=client,
            hostname=self.config.hostname,
            protocol=_protocol(session),
            queue_id=queue_id,
            rcpts=rcpts,
            now=self.clock(),
        )
        content = trace + data
        message = self.spool.new_message(
            mail_from, rcpts, len(content), flags=flags, client=client, queue_id=queue_id
        )
        await self.commits.put(message, content)
        origin = message_trace(data)
        _log.info(
            "intake.queued",
            queue_id=queue_id,
            mail_from=mail_from,
            rcpt_count=len(rcpts),
            size=len(data),
            message_id=origin.message_id,
            client=client,
            client_port=_client_port(session),
            upstream_queue_id=origin.upstream_queue_id,
            tls=session.ssl is not None,
            auth=_auth_user(session),
            requiretls=requiretls,
        )
        if self.on_queued is not None:
            try:
                self.on_queued(message, content)
            except Exception:
                # The message is safe on disk; the queue runner will find it on its next poll.
                _log.exception("intake.handoff_failed", queue_id=queue_id)
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _tls_required_no(self, data: bytes, session: Session, client: str) -> bool:
        """Whether the message's ``TLS-Required: No`` is honoured (``[relay].tls_required_no``)."""
        if not tls_required_no(data):
            return False
        mode = self.config.tls_required_no
        if mode == "honour" or (mode == "authenticated" and session.authenticated):
            return True
        _log.info("intake.tls_required_no_ignored", client=client, mode=mode)
        return False

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, SpoolError):
            _log.warning("intake.spool_failed", error=str(error))
            return "451 4.3.0 Temporary failure, try again later"
        if isinstance(error, TLSSetupException):
            # A client that gave up on our certificate: its business, no traceback.
            cause = error.__cause__ or error
            _log.info("intake.starttls_failed", error=f"{type(cause).__name__}: {cause}")
            return "454 4.7.0 TLS handshake failed"
        _log.error("intake.error", error=repr(error), exc_info=error)
        return "451 4.3.0 Temporary failure, try again later"


def _client(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")


def _client_port(session: Session) -> int:
    peer = session.peer
    return int(peer[1]) if isinstance(peer, tuple) and len(peer) > 1 else 0


def _auth_user(session: Session) -> str:
    data = session.auth_data
    login = getattr(data, "login", None)
    return login.decode("utf-8", "replace") if isinstance(login, bytes) else ""


# --- start / stop --------------------------------------------------------------------------


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
