"""The intake's aiosmtpd handler (`IntakeHandler`): the protocol decisions about mail. Relay
access, the smuggling check, the trace header, the spool and the reply, 250 only once the
message is on disk; `on_queued(message, data)` then tells whoever cares. Starting and stopping
the listener is `relay.intake.server`'s.

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

import time
from collections.abc import Callable

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

from relay.config import RelayConfig
from relay.errors import SpoolError
from relay.intake.commands import table_names
from relay.intake.group_commit import GroupCommit
from relay.intake.hygiene import address_problem
from relay.intake.message import bare_line_end, received_header, require_tls_esmtp, tls_required_no
from relay.intake.requiretls import requiretls_offered
from relay.intake.rules import client_allowed, parse_networks
from relay.intake.trace import message_trace
from relay.queue.spool import MessageFlags, QueuedMessage, Spool, new_queue_id

_log = structlog.get_logger("relay.intake.handler")

# Told of each message once it is durable: its envelope and the bytes as queued.
OnQueued = Callable[[QueuedMessage, bytes], None]


def _protocol(session: Session) -> str:
    """RFC 3848 'with' keyword."""
    if not session.extended_smtp:
        return "SMTP"
    return "ESMTP" + ("S" if session.ssl else "") + ("A" if session.authenticated else "")


class IntakeHandler:
    """The aiosmtpd handler: relay access, smuggling check, trace header, spool, reply."""

    def __dir__(self) -> list[str]:
        return table_names(self)

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
        flags = self._message_flags(data, session, envelope, client)
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
            requiretls=flags.requiretls,
        )
        if self.on_queued is not None:
            try:
                self.on_queued(message, content)
            except Exception:
                # The message is safe on disk; the queue runner will find it on its next poll.
                _log.exception("intake.handoff_failed", queue_id=queue_id)
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _message_flags(
        self, data: bytes, session: Session, envelope: Envelope, client: str
    ) -> MessageFlags:
        """The flags the message is spooled with, from MAIL FROM's parameters and its header."""
        options = {o.upper() for o in envelope.mail_options}
        requiretls = "REQUIRETLS" in options or (
            self._offers_requiretls(session, tls=False) and require_tls_esmtp(data)
        )
        return MessageFlags(
            # RFC 8689 4.1: with REQUIRETLS the TLS-Required header field is ignored.
            tls_required_no=not requiretls and self._tls_required_no(data, session, client),
            smtputf8="SMTPUTF8" in options,
            eight_bit="BODY=8BITMIME" in options,
            requiretls=requiretls,
        )

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
