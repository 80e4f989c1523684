"""One connection helper for the state: an SQLite file or a PostgreSQL connection pool.

Stores write their SQL once with ``?`` placeholders and run it through `Database.transaction`,
which yields a `Tx`; PostgreSQL gets ``%s`` placeholders. Driver errors (sqlite3, psycopg, the
pool's timeout) become the error class the caller names, so each library sees its own error.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from relay.state_url import StateUrl

log = structlog.get_logger(__name__)

Dialect = Literal["sqlite", "postgresql"]
Params = Sequence[Any]
Row = tuple[Any, ...]


class StateError(Exception):
    """The state database could not be opened, read or written (translated at each store)."""


class Cursor(Protocol):
    """What stores use of a DB-API cursor."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx:
    """One open transaction: `execute` SQL written with ``?`` placeholders."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self._cursor = cursor
        self.dialect: Dialect = dialect

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        if self.dialect == "postgresql":
            sql = _pg_sql(sql)
        self._cursor.execute(sql, tuple(params))
        cursor: Cursor = self._cursor
        return cursor

    def rows(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(r) for r in self.execute(sql, params).fetchall()]

    def row(self, sql: str, params: Params = ()) -> Row | None:
        found = self.execute(sql, params).fetchone()
        return tuple(found) if found is not None else None


_PG_SQL: dict[str, str] = {}


def _pg_sql(sql: str) -> str:
    """``?`` -> ``%s`` (our SQL has no ``?`` or ``%`` in literals)."""
    converted = _PG_SQL.get(sql)
    if converted is None:
        converted = _PG_SQL[sql] = sql.replace("?", "%s")
    return converted


class Database(Protocol):
    """A place the stores keep their tables in."""

    dialect: Dialect

    def transaction(
        self, error: type[Exception] = StateError, *, write: bool = False
    ) -> AbstractContextManager[Tx]: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class SqliteDatabase:
    """One SQLite file (WAL), one connection behind a lock: safe from the event loop and threads."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"{self.path}: cannot open the state file: {exc}") from exc

    def describe(self) -> str:
        return str(self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(
        self, error: type[Exception] = StateError, *, write: bool = False
    ) -> Iterator[Tx]:
        """Writers take the write lock up front (BEGIN IMMEDIATE), so they never deadlock."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield Tx(self._db.cursor(), "sqlite")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except (sqlite3.Error, ValueError) as exc:
                raise error(f"{self.path}: {exc}") from exc


class PostgresDatabase:
    """A psycopg 3 `ConnectionPool` (synchronous: the stores are called from worker threads).

    The pool opens without waiting, so a relay starts while the database is down; a connection
    is checked before use (a restarted server leaves dead ones behind) and a caller waits at most
    `timeout` seconds for one.
    """

    dialect: Dialect = "postgresql"

    def __init__(self, url: StateUrl, *, max_size: int = 4, timeout: float = 5.0) -> None:
        from psycopg_pool import ConnectionPool

        # The pool logs every failed reconnect; the outage is logged once by `Availability`.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        self.url = url
        self.timeout = timeout
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url.conninfo,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout,
            kwargs={"connect_timeout": max(int(timeout), 1), "application_name": "stsguard"},
            check=ConnectionPool.check_connection,
            name="stsguard-state",
        )
        self._pool.open(wait=False)

    def describe(self) -> str:
        return self.url.redacted()

    def close(self) -> None:
        self._pool.close(timeout=2.0)

    @contextmanager
    def transaction(
        self, error: type[Exception] = StateError, *, write: bool = False
    ) -> Iterator[Tx]:
        """READ COMMITTED; commits when the block ends, rolls back on an exception."""
        import psycopg

        try:
            with self._pool.connection() as conn, conn.cursor() as cursor:
                yield Tx(cursor, "postgresql")
        except psycopg.Error as exc:  # PoolTimeout is a psycopg.OperationalError
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise error(f"{self.describe()}: {message}") from exc


def open_database(url: StateUrl) -> SqliteDatabase | PostgresDatabase:
    """The database `url` names; a PostgreSQL pool connects in the background."""
    if url.kind == "sqlite":
        assert url.path is not None
        return SqliteDatabase(url.path)
    return PostgresDatabase(url)
