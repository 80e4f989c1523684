"""aiosmtpd's command table with every command routed through the session's checks
(`_IntakeSMTP._run_command` in `relay.intake.session`), and the cached attribute list aiosmtpd
builds its tables from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.intake.session import _IntakeSMTP


# aiosmtpd builds its command, AUTH and hook tables per connection from `dir()` of the protocol
# and the handler and `inspect.getmembers`, which reads every attribute. Only names with these
# prefixes matter to it, and they belong to the class: list them once per class.
_TABLE_PREFIXES = ("smtp_", "auth_", "handle_")
_TABLE_NAMES: dict[type, list[str]] = {}


def table_names(obj: object) -> list[str]:
    names = _TABLE_NAMES.get(type(obj))
    if names is None:
        everything = object.__dir__(obj)
        names = _TABLE_NAMES[type(obj)] = [n for n in everything if n.startswith(_TABLE_PREFIXES)]
    return names


class CheckedCommand:
    """One entry of aiosmtpd's command table: the command, run through
    `_IntakeSMTP._run_command`. Attributes are the command's own (HELP reads its syntax)."""

    __slots__ = ("method", "name", "server")

    def __init__(
        self, server: _IntakeSMTP, name: str, method: Callable[[str | None], Awaitable[None]]
    ) -> None:
        self.server = server
        self.name = name
        self.method = method

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.method, attr)

    def __call__(self, arg: str | None) -> Awaitable[None]:
        return self.server._run_command(self.name, self.method, arg)


class CommandTable(dict[str, Any]):
    """aiosmtpd's command table (``_smtp_methods``): its dispatcher looks each command up with
    `get`, which hands out the command wrapped in our checks (one small object per command, so a
    session costs nothing for the commands it never sends)."""

    def __init__(self, server: _IntakeSMTP, methods: dict[str, Any]) -> None:
        super().__init__(methods)
        self.server = server

    def get(self, name: str, default: Any = None) -> Any:
        method = super().get(name)
        return default if method is None else CheckedCommand(self.server, name, method)
