"""Where fetched policies and failed fetches are kept: SQLite (WAL) or memory for tests.

The tables live in the shared state file (`state_dir/state.sqlite3`) under an ``mtasts_`` prefix;
a restarted relay finds its policies again (RFC 8461 section 3.3 wants them kept until expiry).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from mtasts.errors import PolicyStoreError
from mtasts.model import Mode, Policy
from mtasts.state import CacheEntry, FetchFailure


class PolicyStore(Protocol):
    """Cached policies per domain, plus the last failed fetch per domain and TXT id (STS-05)."""

    def get(self, domain: str) -> CacheEntry | None: ...

    def put(self, entry: CacheEntry) -> None: ...

    def delete(self, domain: str) -> None: ...

    def list(self) -> list[CacheEntry]: ...

    def record_failure(self, domain: str, failure: FetchFailure) -> None: ...

    def last_failure(self, domain: str, record_id: str) -> FetchFailure | None: ...

    def clear_failures(self, domain: str) -> None: ...


class MemoryPolicyStore:
    """A `PolicyStore` in dictionaries."""

    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}
        self._failures: dict[tuple[str, str], FetchFailure] = {}

    def get(self, domain: str) -> CacheEntry | None:
        return self._entries.get(domain)

    def put(self, entry: CacheEntry) -> None:
        self._entries[entry.domain] = entry

    def delete(self, domain: str) -> None:
        self._entries.pop(domain, None)
        self.clear_failures(domain)

    def list(self) -> list[CacheEntry]:
        return sorted(self._entries.values(), key=lambda e: e.domain)

    def record_failure(self, domain: str, failure: FetchFailure) -> None:
        self._failures[(domain, failure.record_id)] = failure

    def last_failure(self, domain: str, record_id: str) -> FetchFailure | None:
        return self._failures.get((domain, record_id))

    def clear_failures(self, domain: str) -> None:
        for key in [k for k in self._failures if k[0] == domain]:
            del self._failures[key]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS mtasts_policy (
    domain TEXT PRIMARY KEY,
    record_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    max_age INTEGER NOT NULL,
    mx TEXT NOT NULL,
    text TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS mtasts_failure (
    domain TEXT NOT NULL,
    record_id TEXT NOT NULL,
    failed_at REAL NOT NULL,
    result_type TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (domain, record_id)
);
"""

_COLUMNS = "domain, record_id, mode, max_age, mx, text, fetched_at, expires_at"


def _entry(row: tuple[str, str, str, int, str, str, float, float]) -> CacheEntry:
    domain, record_id, mode, max_age, mx, text, fetched_at, expires_at = row
    policy = Policy(mode=Mode(mode), max_age=max_age, mx=tuple(json.loads(mx)), text=text)
    return CacheEntry(domain, policy, record_id, fetched_at, expires_at)


class SqlitePolicyStore:
    """A `PolicyStore` in SQLite, safe to share between the event loop and worker threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise PolicyStoreError(f"{self.path}: cannot open policy store: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except (sqlite3.Error, ValueError) as exc:
                raise PolicyStoreError(f"{self.path}: {exc}") from exc

    def get(self, domain: str) -> CacheEntry | None:
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM mtasts_policy WHERE domain = ?", (domain,)
            ).fetchone()
            return _entry(row) if row else None

    def put(self, entry: CacheEntry) -> None:
        p = entry.policy
        with self._transaction(write=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO mtasts_policy VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        with self._transaction(write=True) as db:
            db.execute("DELETE FROM mtasts_policy WHERE domain = ?", (domain,))
            db.execute("DELETE FROM mtasts_failure WHERE domain = ?", (domain,))

    def list(self) -> list[CacheEntry]:
        with self._transaction() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM mtasts_policy ORDER BY domain").fetchall()
            return [_entry(row) for row in rows]

    def record_failure(self, domain: str, failure: FetchFailure) -> None:
        with self._transaction(write=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO mtasts_failure VALUES (?, ?, ?, ?, ?)",
                (
                    domain,
                    failure.record_id,
                    failure.failed_at,
                    failure.result_type,
                    failure.message,
                ),
            )

    def last_failure(self, domain: str, record_id: str) -> FetchFailure | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT record_id, failed_at, result_type, message FROM mtasts_failure"
                " WHERE domain = ? AND record_id = ?",
                (domain, record_id),
            ).fetchone()
            return FetchFailure(*row) if row else None

    def clear_failures(self, domain: str) -> None:
        with self._transaction(write=True) as db:
            db.execute("DELETE FROM mtasts_failure WHERE domain = ?", (domain,))
