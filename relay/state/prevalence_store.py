"""`detect.prevalence.PrevalenceStore` in SQL (SQLite or PostgreSQL): ``detect_prevalence``.

A batch is added with upserts that sum (``count = count + excluded.count``), never read and
written back, so the relays of a fleet add their sessions into the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable

from detect.errors import PrevalenceStoreError
from detect.prevalence import Batch, PrevalenceRow, host_name, rows_of
from relay.state.database import Database, Tx
from relay.state.migrations import Steps, migrate

COMPONENT = "prevalence"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS detect_prevalence ("
    " day TEXT NOT NULL, host TEXT NOT NULL, address TEXT NOT NULL, measure TEXT NOT NULL,"
    " detail TEXT NOT NULL, count BIGINT NOT NULL,"
    " PRIMARY KEY (day, host, address, measure, detail))",
    "CREATE INDEX IF NOT EXISTS detect_prevalence_host ON detect_prevalence (host, day)",
)
STEPS: Steps = {"sqlite": [_SCHEMA], "postgresql": [_SCHEMA]}

_COLUMNS = "day, host, address, measure, detail, count"
_UPSERT = (
    f"INSERT INTO detect_prevalence ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (day, host, address, measure, detail)"
    " DO UPDATE SET count = detect_prevalence.count + excluded.count"
)


class SqlPrevalenceStore:
    """Prevalence counts in the state database; thread-safe."""

    def __init__(self, db: Database, *, migrate_schema: bool = True) -> None:
        self.db = db
        if migrate_schema:
            migrate(db, COMPONENT, STEPS, PrevalenceStoreError)

    def add(self, batch: Batch) -> None:
        """Add a batch's counts in one transaction."""
        if not batch:
            return
        with self.db.transaction(PrevalenceStoreError, write=True) as tx:
            self.add_rows_in(tx, rows_of(batch))

    @staticmethod
    def add_rows_in(tx: Tx, rows: Iterable[PrevalenceRow]) -> None:
        """Add rows' counts inside a transaction of the caller's (`relay.state.migrate`)."""
        for row in rows:
            key = (row.day, row.host, row.address, row.measure, row.detail)
            tx.execute(_UPSERT, (*key, row.count))

    def rows(self, since_day: str, host: str = "") -> list[PrevalenceRow]:
        sql = f"SELECT {_COLUMNS} FROM detect_prevalence WHERE day >= ?"
        params: list[str] = [since_day]
        if host:
            sql += " AND host = ?"
            params.append(host_name(host))
        with self.db.transaction(PrevalenceStoreError) as tx:
            found = tx.rows(sql + " ORDER BY day, host, address, measure, detail", params)
        return [PrevalenceRow(d, h, a, m, t, int(c)) for d, h, a, m, t, c in found]

    def prune(self, before_day: str) -> int:
        """Delete the counts of days before `before_day`; how many rows went."""
        with self.db.transaction(PrevalenceStoreError, write=True) as tx:
            cursor = tx.execute("DELETE FROM detect_prevalence WHERE day < ?", (before_day,))
            return max(cursor.rowcount, 0)
