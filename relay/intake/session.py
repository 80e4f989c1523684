"""One SMTP session of the intake: aiosmtpd's `SMTP` protocol with the limits and checks of
README "Limits and abuse" (`_IntakeSMTP`), under the rules every session of one intake shares
(`relay.intake.rules.SessionRules`). The protocol decisions about mail (relaying, spooling) are
the handler's, in `relay.intake.handler`.

What a session does beyond aiosmtpd:

- Admission: counted in `relay.intake.limits.ConnectionLimits` before the greeting; over a cap
  the client hears ``421 4.7.0`` and the connection closes (aiosmtpd never sees it).
- Timers: the idle timeout counts bytes as activity (aiosmtpd's, commands only); a session time
  limit; a deadline per command line and a minimum DATA rate (`relay.intake.deadlines`); none
  cuts a message off while it is being queued.
- Every command goes through `_run_command` (control characters and invalid UTF-8 refused with
  ``501 5.5.2``; the junk-command budget). A path the parser chokes on is a ``553``.
- REQUIRETLS (RFC 8689 section 4.1): taken out of the MAIL parameters before aiosmtpd sees
  them (`relay.intake.requiretls`); only on a TLS session, or from a client in ``accept_networks``
  on loopback when ``[relay].requiretls_loopback`` is set.
- ``503`` to STARTTLS inside TLS (RFC 3207 section 4.2). AUTH: PBKDF2 in a worker thread, failures
  answered after a delay, counted per session and per address, then ``421``.

The aiosmtpd internals used here are pinned by tests/relay/test_aiosmtpd_internals.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, syntax

from relay.config import RelayConfig
from relay.intake.auth import PasswordAuthenticator
from relay.intake.commands import CommandTable, table_names
from relay.intake.data import take_data
from relay.intake.deadlines import RequestClock, RequestTimer
from relay.intake.hygiene import command_problem
from relay.intake.limits import client_key
from relay.intake.requiretls import requiretls_offered, requiretls_refusal, split_requiretls
from relay.intake.rules import CLOSING_REPLIES, SessionRules, client_allowed
from relay.intake.session_setup import set_up

_log = structlog.get_logger("relay.intake.session")


# ``<local@domain>`` with a dot-atom local part and a domain of letters, digits and hyphens.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


# Commands that move no mail; a session may send `max_junk_commands` of them between messages.
_JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP", "HELO", "EHLO"})


class _IntakeSMTP(SMTP):
    """aiosmtpd's SMTP with the intake's limits and checks.

    A failing RCPT or DATA hook answers that command with 451 (via `handle_exception`) and the
    session goes on in the state the command's failure leaves. The aiosmtpd internals used here
    are pinned by tests/relay/test_aiosmtpd_internals.py and the version bound in pyproject.toml.
    """

    def __init__(self, handler: Any, *, rules: SessionRules | None = None, **kwargs: Any) -> None:
        self.rules = rules or SessionRules.from_config(
            RelayConfig(hostname=kwargs.get("hostname") or "localhost")
        )
        kwargs.setdefault("timeout", self.rules.idle_timeout)
        set_up(self, handler, **kwargs)  # SMTP.__init__, its tables built once
        self._admission: tuple[str, bool] | None = None
        self._refused = False
        self._client_ip = ""
        self._session_timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._in_hook = False
        self._expired = ""  # a limit ran out during a hook: close once it returns
        self._junk = 0
        self._auth_failures = 0
        self._auth_failed = False
        self._auth_pending: tuple[str, LoginPassword] | None = None
        self._smtp_methods = CommandTable(self, self._smtp_methods)
        self._requests = RequestTimer(
            self.loop,
            RequestClock(self.rules.command_deadline, self.rules.min_data_rate),
            self._limit_reached,
        )

    def __dir__(self) -> list[str]:
        return table_names(self)

    # -- connections and timers --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._admission is None:  # a new connection (not the TLS layer after STARTTLS)
            peer = transport.get_extra_info("peername")
            self._client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
            inside = client_allowed(self._client_ip, self.rules.networks)
            key = client_key(self._client_ip)
            refused = self.rules.connections.admit(key, inside=inside)
            if refused is not None:
                self._refused = True
                unlogged = self.rules.refusals.due(key, self.loop.time())
                if unlogged is not None:
                    _log.info(
                        "intake.connection_refused",
                        client=self._client_ip,
                        limit=refused,
                        unlogged_before=unlogged,
                    )
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(
                    f"421 4.7.0 {self.rules.hostname} Too many connections, try again later"
                    "\r\n".encode()
                )
                transport.close()
                return
            self._admission = (key, inside)
            self._last_activity = self.loop.time()
            self._session_timer = self.loop.call_later(
                self.rules.session_timeout, self._limit_reached, "session_timeout"
            )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # aiosmtpd never saw this connection
        if self._session_timer is not None:
            self._session_timer.cancel()
        self._requests.cancel()
        if self._admission is not None:
            key, inside = self._admission
            self.rules.connections.release(key, inside=inside)
            self._admission = None
            self._refused = True  # counted once, whatever else calls this
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self.loop.time()
        self._requests.received(data)
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd re-arms the idle timer for every command; a pending one is kept instead
        (`_timeout_cb` measures idleness from the last byte and re-arms for the rest)."""
        armed = self._timeout_handle
        if (
            duration is not None
            or not armed
            or armed.cancelled()
            or armed.when() <= self.loop.time()
        ):
            super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        """aiosmtpd's idle timer (reset per command): idle means no bytes either, so a long
        DATA that keeps arriving is not cut off; a client that sends nothing hears 421."""
        idle = self.loop.time() - self._last_activity
        if self._in_hook:
            idle = 0.0  # we are the ones working (queueing a message), not the client
        if idle < self._timeout_duration:
            self._reset_timeout(self._timeout_duration - idle)
            return
        self._limit_reached("idle_timeout")

    def _limit_reached(self, limit: str) -> None:
        if self._in_hook:
            # Never cut a message off while it is being queued: the client would send it again.
            self._expired = limit
            return
        self._close_421(limit)

    def _close_421(self, limit: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        _log.info("intake.session_closed", client=self._client_ip, limit=limit)
        status, what = CLOSING_REPLIES.get(limit, ("4.7.0", "Limit reached"))
        assert isinstance(transport, asyncio.WriteTransport)
        with contextlib.suppress(OSError, RuntimeError):  # e.g. a TLS handshake still under way
            transport.write(
                f"421 {status} {self.rules.hostname} {what}, closing connection\r\n".encode()
            )
        transport.close()

    # -- every command --

    async def _run_command(
        self, name: str, method: Callable[[str | None], Awaitable[None]], arg: str | None
    ) -> None:
        """`method` behind the command hygiene check and the junk-command budget."""
        problem = command_problem(arg)
        if problem is not None:
            _log.info("intake.command_refused", client=self._client_ip, command=name, reply=problem)
            await self.push(problem)
            return
        if name in _JUNK_COMMANDS:
            self._junk += 1
            if self._junk > self.rules.max_junk_commands:
                self._close_421("max_junk_commands")
                return
        await method(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's MAIL/RCPT path parser, with a fast path for the common ``<local@domain>``.

        aiosmtpd builds a typing.Protocol class and runs the RFC 5322 header parser on every
        call (about 15% of an intake process's CPU in the benchmark). For a dot-atom local part
        and a plain domain the answer is the text between the brackets and the rest after any
        blanks; a property test checks that against aiosmtpd's parser. Junk that makes the stdlib
        parser raise is a syntax error here, with one log line."""
        m = _SIMPLE_PATH.match(arg)
        if m is not None:
            rest = arg[m.end() :].lstrip(" \t")
            local = m.group(1).rpartition("@")[0]
            if not rest.startswith("(") and len(local) <= (self.local_part_limit or len(local)):
                return m.group(1), rest
        try:
            return super()._getaddr(arg)
        except Exception as exc:
            # The stdlib parser trips over some junk (``<``: IndexError, ``<$@[:&_>(x)``:
            # AttributeError): a syntax error reply rather than a 451 and a traceback.
            _log.info("intake.address_unparsable", client=self._client_ip, error=type(exc).__name__)
            return None, None

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        self._in_hook = True
        if command == "DATA":
            self._requests.data_ended()  # all of it is here: the rest is our work
        try:
            status = await super()._call_handler_hook(command, *args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if command not in ("RCPT", "DATA"):
                raise
            status = await self.handle_exception(exc)
        finally:
            self._in_hook = False
            if self._expired:
                self.loop.call_soon(self._close_421, self._expired)
        if command == "DATA" and isinstance(status, str) and status.startswith("250"):
            self._junk = 0  # a message was queued: the session is doing its job
        return status

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        self._requests.data_started()
        try:
            if self._decode_data or "DATA" not in self._handle_hooks:
                await super().smtp_DATA(arg)
            else:
                await take_data(self, arg)
        finally:
            self._requests.data_ended()

    # -- REQUIRETLS, STARTTLS and AUTH --

    def offers_requiretls(self) -> bool:
        """True when this session may use REQUIRETLS (`requiretls_offered`)."""
        return requiretls_offered(
            tls=self._tls_protocol is not None,
            client=self._client_ip,
            networks=self.rules.networks,
            loopback_ok=self.rules.requiretls_loopback,
        )

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        """MAIL with REQUIRETLS judged here (aiosmtpd would keep one of a repeated parameter
        and refuse the keyword); the accepted flag goes into the envelope's mail options."""
        session, envelope = self.session, self.envelope
        found: list[str] = []
        fresh = envelope is not None and not envelope.mail_from  # else a nested MAIL: 503
        if arg is not None and session is not None and session.extended_smtp:
            arg, found = split_requiretls(arg)
        if found and fresh:
            refusal = requiretls_refusal(found, allowed=self.offers_requiretls())
            if refusal is not None:
                _log.info("intake.requiretls_refused", client=self._client_ip, reply=refusal[:3])
                await self.push(refusal)
                return
        await super().smtp_MAIL(arg)
        if found and fresh and envelope is not None and envelope.mail_from:
            envelope.mail_options.append("REQUIRETLS")

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            await self.push("503 5.5.1 Error: TLS already active")  # RFC 3207 section 4.2
            return
        await super().smtp_STARTTLS(arg)
        # Plaintext sent behind STARTTLS is thrown away (TLS-04); so is its unfinished line.
        self._requests.line_discarded()

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        key = client_key(self._client_ip)
        throttle = self.rules.auth_failures
        if throttle.blocked(key, self.loop.time()):
            _log.warning("intake.auth_throttled", client=self._client_ip, scope="address")
            self._close_421("auth_failures")
            return
        self._auth_failed = False
        self._auth_pending = None
        await super().smtp_AUTH(arg)
        if self._auth_pending is not None:
            if await self._check_password(*self._auth_pending):
                return
            self._auth_failed = True
        if not self._auth_failed:
            return
        # The credentials were checked and refused; `_authenticate` left the reply to us.
        self._auth_failures += 1
        from_address = throttle.record(key, self.loop.time())
        _log.warning(
            "intake.auth_failed",
            client=self._client_ip,
            failures=self._auth_failures,
            failures_from_address=from_address,
        )
        await asyncio.sleep(self.rules.auth_failure_delay)
        if (
            self._auth_failures >= self.rules.auth_failures_per_connection
            or from_address >= throttle.limit
        ):
            _log.warning("intake.auth_throttled", client=self._client_ip, scope="connection")
            self._close_421("auth_failures")
            return
        await self.push("535 5.7.8 Authentication credentials invalid")

    async def _check_password(self, mechanism: str, auth_data: LoginPassword) -> bool:
        """PBKDF2 in a worker thread (0.1 to 0.5 s of CPU that would stall every session);
        on success the session is authenticated as aiosmtpd would have done it."""
        authenticator = self._authenticator
        assert isinstance(authenticator, PasswordAuthenticator)
        ok = await asyncio.to_thread(authenticator.check, auth_data.login, auth_data.password)
        user = auth_data.login.decode("utf-8", "replace")[:64]
        if not ok:
            _log.warning("intake.auth", mechanism=mechanism, user=user, success=False)
            return False
        _log.info("intake.auth", mechanism=mechanism, user=user, success=True)
        assert self.session is not None
        self.session.authenticated = True
        self.session.auth_data = auth_data  # type: ignore[assignment]  # typed None in aiosmtpd
        await self.push("235 2.7.0 Authentication successful")
        return True

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(self._authenticator, PasswordAuthenticator) and isinstance(
            auth_data, LoginPassword
        ):
            self._auth_pending = (mechanism, auth_data)
            return AuthResult(success=False, handled=True)  # smtp_AUTH checks it, in a thread
        result: AuthResult = super()._authenticate(mechanism, auth_data)
        if not result.success and not result.handled and result.message is None:
            self._auth_failed = True
            return AuthResult(success=False, handled=True)  # smtp_AUTH answers, after the delay
        return result
