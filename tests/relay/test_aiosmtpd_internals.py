"""The aiosmtpd internals `relay.intake.session._IntakeSMTP` builds on are the ones it was written
against (aiosmtpd 1.4.6; pyproject.toml bounds the version). A new aiosmtpd that changes any of
them fails here, before it can change how the intake treats clients: read the new code, adapt
`_IntakeSMTP`, then record the new fingerprints."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import types
import weakref
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, _AuthMechAttr

from relay.config import Config, RelayConfig
from relay.intake.auth import PasswordAuthenticator
from relay.intake.commands import CheckedCommand
from relay.intake.deadlines import RequestTimer
from relay.intake.handler import IntakeHandler
from relay.intake.server import Intake
from relay.intake.session import _IntakeSMTP
from relay.queue.spool import Spool

# What each is relied on for:
# __init__: builds _smtp_methods / _handle_hooks / _auth_methods from dir(), sets
#   _timeout_duration; relay.intake.session_setup mirrors it for later sessions
# _handle_client: dispatches through _smtp_methods, resets the idle timer per command
# _getaddr: the MAIL/RCPT path parser we put a fast path and an error net in front of
# _call_handler_hook: every handle_* call goes through it (451 on RCPT/DATA, the junk reset)
# _timeout_cb, _reset_timeout: the idle timer (we answer 421 and count bytes as activity)
# connection_made, connection_lost: the admission and release of each session
# smtp_STARTTLS: sets _tls_protocol (503 to a second STARTTLS)
# smtp_AUTH, auth_PLAIN, auth_LOGIN, _authenticate: AuthResult(handled=True) means "no reply
#   from aiosmtpd", which lets the failure reply wait for the throttle
# smtp_DATA: relay.intake.data.take_data does what it does (checks, replies, size and line
#   limits, the hook, the post-DATA state) with the body read in runs of lines
FINGERPRINTS = {
    "__init__": "8a9ca80f23ad9bf2",
    "_handle_client": "0e4d096403af6c74",
    "_getaddr": "0aeb21c56ac1260e",
    "_call_handler_hook": "6ff23a6634ea0307",
    "_timeout_cb": "10a7351f9bec2818",
    "_reset_timeout": "fef19b94d28dff31",
    "connection_made": "77a45df5065bba34",
    "connection_lost": "d3bf6349bc3c25c1",
    "smtp_STARTTLS": "6565289f4131fa13",
    "smtp_AUTH": "79078b308377ac48",
    "auth_PLAIN": "71fe14c537cc5039",
    "auth_LOGIN": "f121f6cb809cc2ad",
    "_authenticate": "4252dad9a1780535",
    "smtp_DATA": "3a33f30d3fd6d02f",
}


def fingerprint(name: str) -> str:
    return hashlib.sha256(inspect.getsource(getattr(SMTP, name)).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_aiosmtpd_internal_is_unchanged(name: str) -> None:
    assert fingerprint(name) == FINGERPRINTS[name], (
        f"aiosmtpd {version('aiosmtpd')} changed SMTP.{name}; check _IntakeSMTP against it"
    )


def test_the_tables_and_state_we_use_exist() -> None:
    loop = asyncio.new_event_loop()
    try:
        smtp = _IntakeSMTP(object(), loop=loop, hostname="h")
        assert {"MAIL", "RCPT", "DATA", "STARTTLS", "AUTH", "NOOP"} <= set(smtp._smtp_methods)
        assert smtp._timeout_duration == smtp.rules.idle_timeout
        assert smtp._tls_protocol is None
        assert isinstance(smtp._handle_hooks, dict)
        # The dispatcher's look-up hands out our checked command, with aiosmtpd's HELP text.
        mail = smtp._smtp_methods.get("MAIL")
        assert isinstance(mail, CheckedCommand)
        assert mail.__smtp_syntax__ == "MAIL FROM: <address>"
        assert "self._smtp_methods.get(command)" in inspect.getsource(SMTP._handle_client)
        # aiosmtpd reads our handle_EHLO as its five-argument form (the tables built once per
        # handler by relay.intake.session_setup keep what it found).
        handler = IntakeHandler.__new__(IntakeHandler)
        assert _IntakeSMTP(handler, loop=loop, hostname="h")._ehlo_hook_ver == "new"
    finally:
        loop.close()


def _comparable(value: Any, owner: object) -> Any:
    """An attribute of a session in a form two sessions can be compared by: what a bound method
    calls and whether it is bound to its own session, a reader's limit, a table's entries."""
    if isinstance(value, types.MethodType):
        return (value.__func__, value.__self__ is owner or value.__self__)
    if isinstance(value, _AuthMechAttr):
        return (_comparable(value.method, owner), value.is_builtin)
    if isinstance(value, dict):
        return {k: _comparable(v, owner) for k, v in value.items()}
    if isinstance(value, weakref.ReferenceType):
        return _comparable(value(), owner)
    if isinstance(value, asyncio.StreamReader):
        return ("reader", value._limit)  # type: ignore[attr-defined]
    if isinstance(value, asyncio.Future):
        return ("future", value.done())
    if isinstance(value, RequestTimer):
        return "timer"
    return value


@pytest.mark.parametrize("auth", [False, True])
async def test_a_later_session_is_set_up_as_aiosmtpd_sets_up_the_first(
    tmp_path: Path, auth: bool
) -> None:
    """The intake's sessions after the first take aiosmtpd's tables from the first
    (`relay.intake.session_setup`): they must end up with the same attributes, their commands
    and AUTH mechanisms bound to themselves."""
    intake = Intake(Config(relay=RelayConfig(hostname="mx.test")), Spool(tmp_path / "q"))
    if auth:  # AUTH offered: aiosmtpd's PLAIN and LOGIN stay in the table
        intake.authenticator = PasswordAuthenticator({})
    first, later = intake._protocol(), intake._protocol()
    assert vars(first).keys() == vars(later).keys()
    for name in vars(first):
        mine = _comparable(getattr(first, name), first)
        theirs = _comparable(getattr(later, name), later)
        assert mine == theirs, name
    assert later._smtp_methods.get("MAIL").method.__self__ is later  # type: ignore[union-attr]
    assert bool(later._auth_methods) is auth
