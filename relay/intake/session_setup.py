"""aiosmtpd's `SMTP.__init__` for the intake's sessions without its per-connection introspection.

aiosmtpd builds three tables on every connection: the SMTP commands and AUTH mechanisms (from
`inspect.getmembers` of the protocol and the handler) and the handler's hooks, and reads
handle_EHLO's signature; together most of a session's set-up. They depend only on the protocol
class, the handler and the excluded AUTH mechanisms, so the first session of each such triple
runs aiosmtpd's own `__init__` (its checks and warnings included) and the tables are kept; later
sessions set the same attributes with the kept tables bound to themselves.

This mirrors aiosmtpd 1.4.6's `SMTP.__init__` (pinned by its fingerprint in
tests/relay/test_aiosmtpd_internals.py, which also checks that both ways build the same session).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import MethodType
from typing import Any, cast

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, _AuthMechAttr, login_always_fail


@dataclass(frozen=True, slots=True)
class _Tables:
    handler: Any  # kept alive, so that its id in the key stays its own
    commands: dict[str, Callable[..., Any]]  # name -> function of the protocol class
    auth: dict[str, tuple[Callable[..., Any], bool]]  # mechanism -> (function | bound, builtin)
    hooks: dict[str, Callable[..., Any]]  # the handler's bound hooks
    ehlo_hook_ver: str | None


_TABLES: dict[tuple[type, int, tuple[str, ...]], _Tables] = {}


def _kept(smtp: SMTP, handler: Any) -> _Tables:
    commands = {name: method.__func__ for name, method in smtp._smtp_methods.items()}
    auth = {
        mechanism: (
            cast(MethodType, attr.method).__func__ if attr.is_builtin else attr.method,
            attr.is_builtin,
        )
        for mechanism, attr in smtp._auth_methods.items()
    }
    return _Tables(handler, commands, auth, dict(smtp._handle_hooks), smtp._ehlo_hook_ver)


def set_up(smtp: SMTP, handler: Any, **kwargs: Any) -> None:
    """`SMTP.__init__(smtp, handler, **kwargs)`, with the tables of an earlier session."""
    excluded = tuple(sorted(kwargs.get("auth_exclude_mechanism") or ()))
    key = (type(smtp), id(handler), excluded)
    tables = _TABLES.get(key)
    if tables is None or tables.handler is not handler or not kwargs.keys() <= _KNOWN:
        SMTP.__init__(smtp, handler, **kwargs)
        if kwargs.keys() <= _KNOWN:
            _TABLES[key] = _kept(smtp, handler)
        return
    _set_attributes(smtp, handler, tables, **kwargs)


def _set_attributes(
    smtp: SMTP,
    handler: Any,
    tables: _Tables,
    *,
    data_size_limit: int | None,
    enable_SMTPUTF8: bool,
    decode_data: bool,
    hostname: str,
    ident: str | None = None,
    tls_context: Any = None,
    require_starttls: bool = False,
    timeout: float = 300,
    auth_require_tls: bool = True,
    auth_exclude_mechanism: Iterable[str] | None = None,
    authenticator: Any = None,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """What aiosmtpd's `__init__` sets, in its order, for the arguments in `_KNOWN`."""
    smtp.__ident__ = ident or aiosmtpd.smtp.__ident__
    smtp.loop = loop
    asyncio.StreamReaderProtocol.__init__(
        smtp,
        asyncio.StreamReader(loop=loop, limit=smtp.line_length_limit),
        client_connected_cb=smtp._cb_client_connected,
        loop=loop,
    )
    smtp.event_handler = handler
    smtp.data_size_limit = data_size_limit
    smtp.enable_SMTPUTF8 = enable_SMTPUTF8
    smtp._decode_data = decode_data
    smtp.command_size_limits.clear()
    smtp.hostname = hostname
    smtp.tls_context = tls_context
    smtp.require_starttls = tls_context and require_starttls
    smtp._timeout_duration = timeout
    smtp._timeout_handle = None
    smtp._tls_handshake_okay = True
    smtp._tls_protocol = None
    smtp._original_transport = None
    smtp.session = None
    smtp.envelope = None
    smtp.transport = None
    smtp._handler_coroutine = None
    smtp._auth_require_tls = auth_require_tls
    smtp._proxy_timeout = None
    smtp._authenticator = authenticator
    smtp._auth_callback = None if authenticator is not None else login_always_fail
    smtp._auth_required = False
    smtp._auth_methods = {
        mechanism: _AuthMechAttr(MethodType(method, smtp) if builtin else method, builtin)
        for mechanism, (method, builtin) in tables.auth.items()
    }
    smtp._handle_hooks = tables.hooks
    smtp._ehlo_hook_ver = tables.ehlo_hook_ver
    smtp._smtp_methods = {name: MethodType(f, smtp) for name, f in tables.commands.items()}
    smtp._enforce_call_limit = False


# Arguments the fast way takes (the keywords of `_set_attributes`); any other (proxy protocol,
# call limits, ...) goes to aiosmtpd.
_KNOWN = frozenset(
    name
    for name, p in inspect.signature(_set_attributes).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)
