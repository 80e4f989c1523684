"""`tlsrpt_emit.inbound.ReceivedReportStore` in SQL (SQLite or PostgreSQL): ``tlsrpt_received``.

One row per `report-id`: the first copy is kept, a second one (a sender's retry, the same report
by https and by mail, or two relays of a fleet taking it) is not added again. ``tlsrpt_alerts``
holds which alerts went out, so each goes once per day, domain and kind across a fleet.
"""

from __future__ import annotations

from collections.abc import Iterable

from relay.state.database import Database, Row, Tx
from relay.state.migrations import Steps, migrate
from tlsrpt_emit.errors import ReceivedStoreError
from tlsrpt_emit.inbound import ReceivedReport

COMPONENT = "tlsrpt_received"


def _schema(real: str, blob: str) -> tuple[str, ...]:
    return (
        "CREATE TABLE IF NOT EXISTS tlsrpt_received ("
        " report_id TEXT PRIMARY KEY, organization TEXT NOT NULL, domains TEXT NOT NULL,"
        f" start_at {real} NOT NULL, end_at {real} NOT NULL, received_at {real} NOT NULL,"
        f" via TEXT NOT NULL, document {blob} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS tlsrpt_received_end ON tlsrpt_received (end_at)",
    )


_ALERTS = (
    "CREATE TABLE IF NOT EXISTS tlsrpt_alerts ("
    " day TEXT NOT NULL, domain TEXT NOT NULL, kind TEXT NOT NULL,"
    " PRIMARY KEY (day, domain, kind))",
)

STEPS: Steps = {
    "sqlite": [_schema("REAL", "BLOB"), _ALERTS],
    "postgresql": [_schema("DOUBLE PRECISION", "BYTEA"), _ALERTS],
}

_COLUMNS = "report_id, organization, domains, start_at, end_at, received_at, via, document"
_INSERT = (
    f"INSERT INTO tlsrpt_received ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (report_id) DO NOTHING"
)


class SqlReceivedReportStore:
    """Received reports in the state database; thread-safe."""

    def __init__(self, db: Database, *, migrate_schema: bool = True) -> None:
        self.db = db
        if migrate_schema:
            migrate(db, COMPONENT, STEPS, ReceivedStoreError)

    def add(self, received: ReceivedReport) -> bool:
        report = received.report
        row = (
            report.report_id,
            report.organization_name,
            ",".join(received.domains),
            report.start.timestamp(),
            report.end.timestamp(),
            received.received_at,
            received.via,
            received.document,
        )
        with self.db.transaction(ReceivedStoreError, write=True) as tx:
            return self.put_rows_in(tx, [row]) > 0

    def rows(self) -> list[Row]:
        """Every kept report as stored (`relay.state.migrate` moves them)."""
        with self.db.transaction(ReceivedStoreError) as tx:
            return [
                (*row[:7], bytes(row[7]))
                for row in tx.rows(f"SELECT {_COLUMNS} FROM tlsrpt_received ORDER BY report_id")
            ]

    @staticmethod
    def put_rows_in(tx: Tx, rows: Iterable[Row]) -> int:
        """Add rows inside a transaction of the caller's; those whose report-id is there are
        left out. Returns how many were added."""
        added = 0
        for row in rows:
            added += max(tx.execute(_INSERT, row).rowcount, 0)
        return added

    def documents(self, since: float) -> list[bytes]:
        with self.db.transaction(ReceivedStoreError) as tx:
            rows = tx.rows(
                "SELECT document FROM tlsrpt_received WHERE end_at >= ?"
                " ORDER BY start_at, report_id",
                (since,),
            )
        return [bytes(row[0]) for row in rows]

    def claim_alert(self, day: str, domain: str, kind: str) -> bool:
        """True the first time (day, domain, kind) is claimed, by any relay sharing the store."""
        with self.db.transaction(ReceivedStoreError, write=True) as tx:
            cursor = tx.execute(
                "INSERT INTO tlsrpt_alerts (day, domain, kind) VALUES (?, ?, ?)"
                " ON CONFLICT (day, domain, kind) DO NOTHING",
                (day, domain, kind),
            )
            return cursor.rowcount > 0
