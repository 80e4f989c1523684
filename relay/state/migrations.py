"""Versioned schema migrations: each store names its steps; `stsguard_schema` records how far
each component got. Steps run in one transaction, under a lock, so relays starting together on one
PostgreSQL apply each step once; an SQLite file made before versioning is adopted (its step 1 uses
``IF NOT EXISTS``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from relay.state.database import Database, Dialect, StateError, Tx

# component -> dialect -> steps; step N (from 1) is a tuple of statements
Steps = Mapping[Dialect, Sequence[Sequence[str]]]

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS stsguard_schema ("
    " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)
_LOCK_ID = 0x5354_5347  # "STSG": the advisory lock migrations hold on PostgreSQL


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    component: str
    version: int  # applied
    latest: int  # known to this program

    @property
    def current(self) -> bool:
        return self.version == self.latest


def _applied(tx: Tx, component: str) -> int:
    row = tx.row("SELECT version FROM stsguard_schema WHERE component = ?", (component,))
    return int(row[0]) if row else 0


def migrate(
    db: Database, component: str, steps: Steps, error: type[Exception] = StateError
) -> None:
    """Apply the steps of `component` not yet applied; refuse a schema newer than we know."""
    todo = steps[db.dialect]
    with db.transaction(error, write=True) as tx:
        if tx.dialect == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_ID,))
        tx.execute(_VERSION_TABLE)
        have = _applied(tx, component)
        if have > len(todo):
            raise error(
                f"{db.describe()}: the {component} tables are at version {have}, newer than this "
                f"stsguard knows ({len(todo)}); upgrade stsguard"
            )
        for statements in todo[have:]:
            for sql in statements:
                tx.execute(sql)
        if have < len(todo):
            tx.execute(
                "INSERT INTO stsguard_schema (component, version) VALUES (?, ?)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, len(todo)),
            )


def status(db: Database, known: Mapping[str, Steps]) -> list[SchemaStatus]:
    """How far each known component's schema is (without changing anything)."""
    with db.transaction() as tx:
        if tx.dialect == "postgresql":
            exists = tx.row("SELECT to_regclass('stsguard_schema') IS NOT NULL")
            present = bool(exists and exists[0])
        else:
            present = (
                tx.row("SELECT 1 FROM sqlite_master WHERE name = 'stsguard_schema'") is not None
            )
        return [
            SchemaStatus(name, _applied(tx, name) if present else 0, len(steps[db.dialect]))
            for name, steps in known.items()
        ]
