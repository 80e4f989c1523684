"""`detect.history.TlsHistoryStore` in SQL (SQLite or PostgreSQL): ``detect_tls_history``.

A record is one upsert (never read-modify-write), so relays recording one host together keep both
facts: a time is only ever replaced by a later one.
"""

from __future__ import annotations

from detect.errors import HistoryStoreError
from detect.history import HostHistory, host_key
from relay.state.database import Database, Row, Tx
from relay.state.migrations import Steps, migrate

COMPONENT = "detect"


def _schema(real: str) -> tuple[str, ...]:
    return (
        "CREATE TABLE IF NOT EXISTS detect_tls_history ("
        f" host TEXT PRIMARY KEY, last_starttls_at {real}, last_valid_cert_at {real},"
        f" last_seen_at {real} NOT NULL)",
    )


STEPS: Steps = {"sqlite": [_schema("REAL")], "postgresql": [_schema("DOUBLE PRECISION")]}

_COLUMNS = "host, last_starttls_at, last_valid_cert_at, last_seen_at"


def _later(column: str) -> str:
    """SQL for "the later of the stored and the new time" (NULL meaning never)."""
    old, new = f"detect_tls_history.{column}", f"excluded.{column}"
    return f"CASE WHEN {old} IS NULL OR {new} > {old} THEN {new} ELSE {old} END"


_UPSERT = (
    f"INSERT INTO detect_tls_history ({_COLUMNS}) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (host) DO UPDATE SET"
    f" last_starttls_at = {_later('last_starttls_at')},"
    f" last_valid_cert_at = {_later('last_valid_cert_at')},"
    f" last_seen_at = {_later('last_seen_at')}"
)


def _history(row: Row) -> HostHistory:
    host, starttls, cert, seen = row
    return HostHistory(
        host,
        float(starttls) if starttls is not None else None,
        float(cert) if cert is not None else None,
        float(seen),
    )


class SqlTlsHistoryStore:
    """Remembered TLS in the state database, surviving restarts; thread-safe."""

    def __init__(self, db: Database, *, migrate_schema: bool = True) -> None:
        self.db = db
        if migrate_schema:
            migrate(db, COMPONENT, STEPS, HistoryStoreError)

    def close(self) -> None:
        self.db.close()

    def get(self, host: str) -> HostHistory | None:
        with self.db.transaction(HistoryStoreError) as tx:
            row = tx.row(
                f"SELECT {_COLUMNS} FROM detect_tls_history WHERE host = ?", (host_key(host),)
            )
        return _history(row) if row else None

    def record(self, host: str, *, offered_starttls: bool, valid_cert: bool, now: float) -> None:
        self.put(
            HostHistory(
                host_key(host), now if offered_starttls else None, now if valid_cert else None, now
            )
        )

    def put(self, history: HostHistory) -> None:
        """Merge a whole history in (later times win): how a relay's buffered records land."""
        with self.db.transaction(HistoryStoreError, write=True) as tx:
            self.put_in(tx, history)

    @staticmethod
    def put_in(tx: Tx, history: HostHistory) -> None:
        """`put` inside a transaction of the caller's (`relay.state.migrate`)."""
        tx.execute(
            _UPSERT,
            (
                host_key(history.host),
                history.last_starttls_at,
                history.last_valid_cert_at,
                history.last_seen_at,
            ),
        )

    def forget(self, host: str) -> bool:
        with self.db.transaction(HistoryStoreError, write=True) as tx:
            cursor = tx.execute("DELETE FROM detect_tls_history WHERE host = ?", (host_key(host),))
            return cursor.rowcount > 0

    def all(self) -> list[HostHistory]:
        with self.db.transaction(HistoryStoreError) as tx:
            rows = tx.rows(f"SELECT {_COLUMNS} FROM detect_tls_history ORDER BY host")
        return [_history(row) for row in rows]
