"""`open_state`: the stores from `[state].url`, sharing one database.

SQLite (one relay): the SQL stores behind `relay.state.failsafe`, so a file that cannot be written
never stops mail. PostgreSQL (a fleet): the same SQL stores behind the in-memory front of
`relay.state.shared`, so an outage of the database never stops mail. Either way the writes that
could not be made are counted in `FailedWrites`. The CLI (`front=False`) gets the SQL stores.
The prevalence store has no front: its writer (`relay.prevalence`) buffers and retries itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from detect.history import TlsHistoryStore
from detect.prevalence import PrevalenceStore
from mtasts.cache import PolicyStore
from relay.state import (
    history_store,
    policy_store,
    prevalence_store,
    received_store,
    report_store,
)
from relay.state.availability import RETRY_INTERVAL, STORE_ERRORS, Availability
from relay.state.database import Database, PostgresDatabase, SqliteDatabase, open_database
from relay.state.failed_writes import FailedWrites
from relay.state.failsafe import FailsafePolicyStore, FailsafeReportStore, FailsafeTlsHistoryStore
from relay.state.history_store import SqlTlsHistoryStore
from relay.state.migrations import Steps, migrate
from relay.state.policy_store import SqlPolicyStore
from relay.state.prevalence_store import SqlPrevalenceStore
from relay.state.received_store import SqlReceivedReportStore
from relay.state.report_store import SqlReportStore
from relay.state.shared import SharedPolicyStore, SharedReportStore, SharedTlsHistoryStore
from relay.state_url import StateUrl
from tlsrpt_emit.inbound import ReceivedReportStore
from tlsrpt_emit.store import ReportStore

# component -> its schema steps, in the order they are migrated
SCHEMAS: dict[str, Steps] = {
    policy_store.COMPONENT: policy_store.STEPS,
    history_store.COMPONENT: history_store.STEPS,
    report_store.COMPONENT: report_store.STEPS,
    prevalence_store.COMPONENT: prevalence_store.STEPS,
    received_store.COMPONENT: received_store.STEPS,
}


def migrate_all(db: Database) -> None:
    """Bring every component's tables to the latest version (raises `StateError`)."""
    for component, steps in SCHEMAS.items():
        migrate(db, component, steps)


@dataclass
class State:
    """The relay's three stores over one database; `close` closes them all."""

    url: StateUrl
    db: SqliteDatabase | PostgresDatabase
    policies: PolicyStore
    history: TlsHistoryStore
    reports: ReportStore
    availability: Availability | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)
    prevalence: PrevalenceStore | None = None
    received: ReceivedReportStore | None = None

    def close(self) -> None:
        for closer in self._closers:
            closer()
        if self.availability is not None:
            self.availability.close()
        self.db.close()


def open_state(
    url: StateUrl,
    *,
    clock: Callable[[], float] = time.time,
    front: bool = True,
    retry_interval: float = RETRY_INTERVAL,
    failed_writes: FailedWrites | None = None,
) -> State:
    """Open the database and its stores (migrating the schema); raises `StateError`.

    `front` puts the failsafe or memory front before the database (the relay, counting what
    could not be written in `failed_writes`); the CLI reads and writes the database directly
    (`front=False`). A PostgreSQL database that is down at start is an outage like any other:
    the relay starts and the schema is migrated when it answers.
    """
    db = open_database(url)
    failed = failed_writes or FailedWrites()
    try:
        if isinstance(db, SqliteDatabase) or not front:
            migrate_all(db)
            policies = SqlPolicyStore(db, migrate_schema=False)
            history = SqlTlsHistoryStore(db, migrate_schema=False)
            reports = SqlReportStore(db, migrate_schema=False)
            prevalence = SqlPrevalenceStore(db, migrate_schema=False)
            received = SqlReceivedReportStore(db, migrate_schema=False)
            if not front:
                return State(
                    url,
                    db,
                    policies,
                    history,
                    reports,
                    prevalence=prevalence,
                    received=received,
                )
            kept = (
                FailsafePolicyStore(policies, failed),
                FailsafeTlsHistoryStore(history, failed),
                FailsafeReportStore(reports, failed),
            )
            return State(
                url,
                db,
                *kept,
                _closers=[store.close for store in kept],
                prevalence=prevalence,
                received=received,
            )
        return _shared(url, db, clock, retry_interval, failed)
    except BaseException:
        db.close()
        raise


def _shared(
    url: StateUrl,
    db: PostgresDatabase,
    clock: Callable[[], float],
    retry_interval: float,
    failed: FailedWrites,
) -> State:
    availability = Availability(
        db, clock=clock, retry_interval=retry_interval, failed_writes=failed
    )
    availability.on_recovery(lambda: migrate_all(db))  # first: the tables, then the replays
    policies = SharedPolicyStore(SqlPolicyStore(db, migrate_schema=False), availability)
    history = SharedTlsHistoryStore(SqlTlsHistoryStore(db, migrate_schema=False), availability)
    reports = SharedReportStore(SqlReportStore(db, migrate_schema=False), availability)
    try:
        migrate_all(db)
    except STORE_ERRORS as exc:
        availability.failed(exc)
    return State(
        url,
        db,
        policies,
        history,
        reports,
        availability,
        [reports.close],
        prevalence=SqlPrevalenceStore(db, migrate_schema=False),
        received=SqlReceivedReportStore(db, migrate_schema=False),
    )


def state_exists(url: StateUrl) -> bool:
    """False for an SQLite file not made yet (a command that only looks must not create it)."""
    return url.path is None or url.path.exists()
