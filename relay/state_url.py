"""`[state].url`: where the state lives, ``sqlite:///path`` or ``postgresql://user@host/db``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SQLITE_PREFIX = "sqlite://"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


class StateUrlError(ValueError):
    """A `[state].url` that is neither an SQLite nor a PostgreSQL URL."""


@dataclass(frozen=True, slots=True)
class StateUrl:
    """A parsed state URL: an SQLite file, or a libpq connection URI."""

    kind: Literal["sqlite", "postgresql"]
    path: Path | None = None  # sqlite
    conninfo: str = ""  # postgresql, as given (libpq parses it)

    @property
    def shared(self) -> bool:
        """True for a store that several relays can share."""
        return self.kind == "postgresql"

    def redacted(self) -> str:
        """The URL for logs and messages, without a password."""
        if self.kind == "sqlite":
            return f"{SQLITE_PREFIX}{self.path}"
        scheme, _, rest = self.conninfo.partition("://")
        auth, at, host = rest.rpartition("@")
        if at and ":" in auth:
            auth = auth.split(":", 1)[0] + ":***"
        return f"{scheme}://{auth}{at}{host}"


def parse_state_url(text: str, default_sqlite: Path) -> StateUrl:
    """`sqlite:///abs/path`, `sqlite://./rel/path`, `postgresql://...`; empty: `default_sqlite`."""
    text = text.strip()
    if not text:
        return StateUrl("sqlite", path=default_sqlite)
    if text.startswith(SQLITE_PREFIX):
        rest = text[len(SQLITE_PREFIX) :]
        if not rest or rest.endswith("/"):
            raise StateUrlError(f"expected sqlite:///path/to/file, got {text!r}")
        return StateUrl("sqlite", path=Path(rest))
    if text.startswith(POSTGRES_PREFIXES):
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(text)
        except Exception as exc:  # psycopg.ProgrammingError, with libpq's words
            raise StateUrlError(f"not a PostgreSQL URL: {exc}") from None
        return StateUrl("postgresql", conninfo=text)
    raise StateUrlError(f"expected sqlite:///path or postgresql://user@host/db, got {text!r}")
