"""`detect.prevalence.PrevalenceStore` in SQL (SQLite or PostgreSQL): ``detect_prevalence`` per
MX host address, ``detect_prevalence_domain`` per recipient domain.

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
_DOMAINS = (
    "CREATE TABLE IF NOT EXISTS detect_prevalence_domain ("
    " day TEXT NOT NULL, domain TEXT NOT NULL, measure TEXT NOT NULL, detail TEXT NOT NULL,"
    " count BIGINT NOT NULL, PRIMARY KEY (day, domain, measure, detail))",
    "CREATE INDEX IF NOT EXISTS detect_prevalence_domain_name"
    " ON detect_prevalence_domain (domain, day)",
)
STEPS: Steps = {"sqlite": [_SCHEMA, _DOMAINS], "postgresql": [_SCHEMA, _DOMAINS]}

_COLUMNS = "day, host, address, measure, detail, count"
_UPSERT = (
    f"INSERT INTO detect_prevalence ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (day, host, address, measure, detail)"
    " DO UPDATE SET count = detect_prevalence.count + excluded.count"
)
_DOMAIN_COLUMNS = "day, domain, measure, detail, count"
_DOMAIN_UPSERT = (
    f"INSERT INTO detect_prevalence_domain ({_DOMAIN_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (day, domain, measure, detail)"
    " DO UPDATE SET count = detect_prevalence_domain.count + excluded.count"
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
            if row.domain:
                key: tuple[str, ...] = (row.day, row.domain, row.measure, row.detail)
                tx.execute(_DOMAIN_UPSERT, (*key, row.count))
            else:
                key = (row.day, row.host, row.address, row.measure, row.detail)
                tx.execute(_UPSERT, (*key, row.count))

    def rows(self, since_day: str, host: str = "", domain: str = "") -> list[PrevalenceRow]:
        """The rows since a day: of one MX host, of one recipient domain, or all of both."""
        found: list[PrevalenceRow] = []
        with self.db.transaction(PrevalenceStoreError) as tx:
            if not domain:
                sql = f"SELECT {_COLUMNS} FROM detect_prevalence WHERE day >= ?"
                params = [since_day]
                if host:
                    sql += " AND host = ?"
                    params.append(host_name(host))
                rows = tx.rows(sql + " ORDER BY day, host, address, measure, detail", params)
                found += [PrevalenceRow(d, h, a, m, t, int(c)) for d, h, a, m, t, c in rows]
            if not host:
                sql = f"SELECT {_DOMAIN_COLUMNS} FROM detect_prevalence_domain WHERE day >= ?"
                params = [since_day]
                if domain:
                    sql += " AND domain = ?"
                    params.append(host_name(domain))
                rows = tx.rows(sql + " ORDER BY day, domain, measure, detail", params)
                found += [PrevalenceRow(d, "", "", m, t, int(c), n) for d, n, m, t, c in rows]
        return found

    def prune(self, before_day: str) -> int:
        """Delete the counts of days before `before_day`; how many rows went."""
        gone = 0
        with self.db.transaction(PrevalenceStoreError, write=True) as tx:
            for table in ("detect_prevalence", "detect_prevalence_domain"):
                cursor = tx.execute(f"DELETE FROM {table} WHERE day < ?", (before_day,))
                gone += max(cursor.rowcount, 0)
        return gone
