"""`stsguard state migrate --to URL`: move an SQLite state into another database (PostgreSQL).

Everything goes in one transaction on the target, merged as the relays themselves write: a policy
replaces an older fetch only, remembered TLS keeps the later time of each fact, TLS-RPT and
downgrade-prevalence counts are added, sent-report progress and received reports are copied. The
source is marked with an id and the target records which ids it took, so running the command
twice never counts the same sessions twice.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass

from detect.history import HostHistory
from detect.prevalence import PrevalenceRow
from mtasts.state import CacheEntry, FetchFailure
from relay.state.database import Database, Row, SqliteDatabase, StateError, Tx, open_database
from relay.state.history_store import SqlTlsHistoryStore
from relay.state.policy_store import SqlPolicyStore
from relay.state.prevalence_store import SqlPrevalenceStore
from relay.state.received_store import SqlReceivedReportStore
from relay.state.report_store import SqlReportStore
from relay.state.stores import migrate_all
from relay.state_url import StateUrl
from tlsrpt_emit.model import PolicyKey
from tlsrpt_emit.store import SentReport, Tally

_IMPORTS = (
    "CREATE TABLE IF NOT EXISTS stsguard_imports ("
    " source_id TEXT PRIMARY KEY, source TEXT NOT NULL, imported_at DOUBLE PRECISION NOT NULL)"
)
ALL_DAYS = "0001-01-01"
_INSTANCE = "CREATE TABLE IF NOT EXISTS stsguard_instance (id TEXT NOT NULL)"


@dataclass(frozen=True, slots=True)
class Moved:
    """What one migration copied."""

    policies: int
    failures: int
    hosts: int
    counter_rows: int
    sessions: int
    sent_reports: int
    prevalence_rows: int = 0
    received_reports: int = 0


@dataclass(frozen=True, slots=True)
class _Source:
    """Everything an SQLite state holds, read in one go before the target is opened."""

    source_id: str
    entries: list[CacheEntry]
    failures: list[tuple[str, FetchFailure]]
    hosts: list[HostHistory]
    sent: list[SentReport]
    batch: dict[PolicyKey, Tally]
    prevalence: list[PrevalenceRow]
    received: list[Row]

    def moved(self) -> Moved:
        return Moved(
            policies=len(self.entries),
            failures=len(self.failures),
            hosts=len(self.hosts),
            counter_rows=sum(1 + len(t.failures) for t in self.batch.values()),
            sessions=sum(t.successes + t.failures.total() for t in self.batch.values()),
            sent_reports=len(self.sent),
            prevalence_rows=len(self.prevalence),
            received_reports=len(self.received),
        )


def _source_id(tx: Tx) -> str:
    tx.execute(_INSTANCE)
    row = tx.row("SELECT id FROM stsguard_instance")
    if row is not None:
        return str(row[0])
    new = uuid.uuid4().hex
    tx.execute("INSERT INTO stsguard_instance (id) VALUES (?)", (new,))
    return new


def migrate_state(source: StateUrl, target: StateUrl) -> Moved:
    """Copy `source` (an SQLite file) into `target`; raises `StateError` with one line."""
    if source.path is None:
        raise StateError(f"{source.redacted()}: the state to move must be an SQLite file")
    if not source.path.exists():
        raise StateError(f"{source.path}: no state file here (no relay ran with this config)")
    if target == source or (target.path is not None and target.path == source.path):
        raise StateError("the target is the state itself")
    read = _read_source(SqliteDatabase(source.path))
    _write_target(open_database(target), read, source, target)
    return read.moved()


def _read_source(src_db: SqliteDatabase) -> _Source:
    """Everything in the source state (its schema brought up to date, its id made if new)."""
    try:
        migrate_all(src_db)
        with src_db.transaction(write=True) as tx:
            source_id = _source_id(tx)
        policies = SqlPolicyStore(src_db, migrate_schema=False)
        history = SqlTlsHistoryStore(src_db, migrate_schema=False)
        reports = SqlReportStore(src_db, migrate_schema=False)
        prevalence = SqlPrevalenceStore(src_db, migrate_schema=False).rows(ALL_DAYS)
        received = SqlReceivedReportStore(src_db, migrate_schema=False).rows()
        entries, failures = policies.list(), policies.all_failures()
        hosts, sent = history.all(), reports.all_sent()
        batch: dict[PolicyKey, Tally] = {}
        for day in reports.days():
            for counts in reports.counts(day):
                batch[counts.key] = Tally(counts.successes, Counter(dict(counts.failures)))
    finally:
        src_db.close()
    return _Source(source_id, entries, failures, hosts, sent, batch, prevalence, received)


def _write_target(dst_db: Database, read: _Source, source: StateUrl, target: StateUrl) -> None:
    """Merge `read` into the target in one transaction, once per source id."""
    try:
        migrate_all(dst_db)
        with dst_db.transaction(write=True) as tx:
            tx.execute(_IMPORTS)
            if tx.row("SELECT 1 FROM stsguard_imports WHERE source_id = ?", (read.source_id,)):
                raise StateError(
                    f"{source.path} was already moved into {target.redacted()}"
                    " (its counts are there; moving it again would count them twice)"
                )
            for entry in read.entries:
                SqlPolicyStore.put_in(tx, entry)
            for domain, failure in read.failures:
                SqlPolicyStore.record_failure_in(tx, domain, failure)
            for host in read.hosts:
                SqlTlsHistoryStore.put_in(tx, host)
            SqlReportStore.add_counts_in(tx, read.batch)
            for report in read.sent:
                SqlReportStore.put_sent_in(tx, report)
            SqlPrevalenceStore.add_rows_in(tx, read.prevalence)
            SqlReceivedReportStore.put_rows_in(tx, read.received)
            tx.execute(
                "INSERT INTO stsguard_imports (source_id, source, imported_at) VALUES (?, ?, ?)",
                (read.source_id, str(source.path), time.time()),
            )
    finally:
        dst_db.close()
