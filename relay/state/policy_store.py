"""`mtasts.cache.PolicyStore` in SQL (SQLite or PostgreSQL): ``mtasts_`` tables.

RFC 8461 section 3.3 wants a policy kept until it expires, so it survives restarts; on a shared
database a policy one relay fetched is the others' cache hit. A put never replaces a newer fetch
(two relays fetching together keep the later one).
"""

from __future__ import annotations

import builtins
import json

from mtasts.errors import PolicyStoreError
from mtasts.model import Mode, Policy
from mtasts.state import CacheEntry, FetchFailure
from relay.state.database import Database, Row, Tx
from relay.state.migrations import Steps, migrate

COMPONENT = "mtasts"


def _schema(real: str) -> tuple[str, ...]:
    return (
        "CREATE TABLE IF NOT EXISTS mtasts_policy ("
        " domain TEXT PRIMARY KEY, record_id TEXT NOT NULL, mode TEXT NOT NULL,"
        " max_age INTEGER NOT NULL, mx TEXT NOT NULL, text TEXT NOT NULL,"
        f" fetched_at {real} NOT NULL, expires_at {real} NOT NULL)",
        "CREATE TABLE IF NOT EXISTS mtasts_failure ("
        " domain TEXT NOT NULL, record_id TEXT NOT NULL,"
        f" failed_at {real} NOT NULL, result_type TEXT NOT NULL, message TEXT NOT NULL,"
        " PRIMARY KEY (domain, record_id))",
    )


STEPS: Steps = {"sqlite": [_schema("REAL")], "postgresql": [_schema("DOUBLE PRECISION")]}

_COLUMNS = "domain, record_id, mode, max_age, mx, text, fetched_at, expires_at"


def _entry(row: Row) -> CacheEntry:
    domain, record_id, mode, max_age, mx, text, fetched_at, expires_at = row
    policy = Policy(mode=Mode(mode), max_age=int(max_age), mx=tuple(json.loads(mx)), text=text)
    return CacheEntry(domain, policy, record_id, float(fetched_at), float(expires_at))


class SqlPolicyStore:
    """A `PolicyStore` in the state database; safe to call from several threads."""

    def __init__(self, db: Database, *, migrate_schema: bool = True) -> None:
        self.db = db
        if migrate_schema:
            migrate(db, COMPONENT, STEPS, PolicyStoreError)

    def close(self) -> None:
        self.db.close()

    def get(self, domain: str) -> CacheEntry | None:
        with self.db.transaction(PolicyStoreError) as tx:
            row = tx.row(f"SELECT {_COLUMNS} FROM mtasts_policy WHERE domain = ?", (domain,))
        return _entry(row) if row else None

    def put(self, entry: CacheEntry) -> None:
        with self.db.transaction(PolicyStoreError, write=True) as tx:
            self.put_in(tx, entry)

    @staticmethod
    def put_in(tx: Tx, entry: CacheEntry) -> None:
        """`put` inside a transaction of the caller's (`relay.state.migrate`)."""
        p = entry.policy
        tx.execute(
            f"INSERT INTO mtasts_policy ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (domain) DO UPDATE SET record_id = excluded.record_id,"
            " mode = excluded.mode, max_age = excluded.max_age, mx = excluded.mx,"
            " text = excluded.text, fetched_at = excluded.fetched_at,"
            " expires_at = excluded.expires_at"
            " WHERE excluded.fetched_at >= mtasts_policy.fetched_at",
            (
                entry.domain,
                entry.record_id,
                str(p.mode),
                p.max_age,
                json.dumps(list(p.mx)),
                p.text,
                entry.fetched_at,
                entry.expires_at,
            ),
        )

    def delete(self, domain: str) -> None:
        with self.db.transaction(PolicyStoreError, write=True) as tx:
            tx.execute("DELETE FROM mtasts_policy WHERE domain = ?", (domain,))
            tx.execute("DELETE FROM mtasts_failure WHERE domain = ?", (domain,))

    def list(self) -> list[CacheEntry]:
        with self.db.transaction(PolicyStoreError) as tx:
            rows = tx.rows(f"SELECT {_COLUMNS} FROM mtasts_policy ORDER BY domain")
        return [_entry(row) for row in rows]

    def record_failure(self, domain: str, failure: FetchFailure) -> None:
        with self.db.transaction(PolicyStoreError, write=True) as tx:
            self.record_failure_in(tx, domain, failure)

    @staticmethod
    def record_failure_in(tx: Tx, domain: str, failure: FetchFailure) -> None:
        tx.execute(
            "INSERT INTO mtasts_failure"
            " (domain, record_id, failed_at, result_type, message) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (domain, record_id) DO UPDATE SET failed_at = excluded.failed_at,"
            " result_type = excluded.result_type, message = excluded.message",
            (
                domain,
                failure.record_id,
                failure.failed_at,
                failure.result_type,
                failure.message,
            ),
        )

    def last_failure(self, domain: str, record_id: str) -> FetchFailure | None:
        with self.db.transaction(PolicyStoreError) as tx:
            row = tx.row(
                "SELECT record_id, failed_at, result_type, message FROM mtasts_failure"
                " WHERE domain = ? AND record_id = ?",
                (domain, record_id),
            )
        return FetchFailure(row[0], float(row[1]), row[2], row[3]) if row else None

    def all_failures(self) -> builtins.list[tuple[str, FetchFailure]]:
        """Every remembered failed fetch, by domain (for `stsguard state migrate`)."""
        with self.db.transaction(PolicyStoreError) as tx:
            rows = tx.rows(
                "SELECT domain, record_id, failed_at, result_type, message FROM mtasts_failure"
                " ORDER BY domain, record_id"
            )
        return [(r[0], FetchFailure(r[1], float(r[2]), r[3], r[4])) for r in rows]

    def clear_failures(self, domain: str) -> None:
        with self.db.transaction(PolicyStoreError, write=True) as tx:
            tx.execute("DELETE FROM mtasts_failure WHERE domain = ?", (domain,))
