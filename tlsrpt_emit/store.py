"""Where TLS-RPT counts and the progress of sent reports are kept: SQLite, or memory for tests.

The tables live in the shared state file (`state_dir/state.sqlite3`) under a ``tlsrpt_`` prefix.
Counts arrive in batches (`CountingSink.flush`), never one write per session.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tlsrpt_emit.errors import ReportStoreError
from tlsrpt_emit.model import FailureKey, PolicyCounts, PolicyKey, PolicyType, ResultType


@dataclass(slots=True)
class Tally:
    """Mutable counts of one policy while a batch is being collected."""

    successes: int = 0
    failures: Counter[FailureKey] = field(default_factory=Counter)

    def merge(self, other: Tally) -> None:
        self.successes += other.successes
        self.failures.update(other.failures)


Batch = Mapping[PolicyKey, Tally]


@dataclass(frozen=True, slots=True)
class SentReport:
    """Progress of one report (one day, one policy domain) towards its rua destinations.

    `delivered` once any destination accepted it (RPT-02); `next_retry` is None when nothing more
    is to be tried (delivered, given up, or the domain publishes no usable record).
    """

    day: datetime.date
    domain: str
    report_id: str
    destinations_done: tuple[str, ...] = ()
    attempts: int = 0
    first_attempt: float | None = None
    next_retry: float | None = None
    last_error: str = ""
    status: str = "pending"  # pending | delivered | failed | no-record

    @property
    def finished(self) -> bool:
        return self.status != "pending"


class ReportStore(Protocol):
    """Counters per UTC day and policy, plus bookkeeping of sent reports."""

    def add_counts(self, batch: Batch) -> None: ...

    def counts(self, day: datetime.date, domain: str | None = None) -> list[PolicyCounts]: ...

    def domains(self, day: datetime.date) -> list[str]: ...

    def get_sent(self, day: datetime.date, domain: str) -> SentReport | None: ...

    def put_sent(self, sent: SentReport) -> None: ...

    def pending_sent(self) -> list[SentReport]: ...


def _freeze(key: PolicyKey, tally: Tally) -> PolicyCounts:
    failures = tuple(sorted(tally.failures.items(), key=lambda item: _failure_sort(item[0])))
    return PolicyCounts(key=key, successes=tally.successes, failures=failures)


def _failure_sort(f: FailureKey) -> tuple[str, ...]:
    return (
        str(f.result_type),
        f.receiving_mx_hostname,
        f.receiving_ip,
        f.sending_mta_ip,
        f.receiving_mx_helo,
        f.failure_reason_code,
        f.additional_information,
    )


def _policy_sort(c: PolicyCounts) -> tuple[str, str, tuple[str, ...]]:
    return (c.key.policy_domain, str(c.key.policy_type), c.key.policy_strings)


class MemoryReportStore:
    """A `ReportStore` in dictionaries (tests, and runs without a state directory)."""

    def __init__(self) -> None:
        self._counts: dict[PolicyKey, Tally] = {}
        self._sent: dict[tuple[datetime.date, str], SentReport] = {}

    def add_counts(self, batch: Batch) -> None:
        for key, tally in batch.items():
            self._counts.setdefault(key, Tally()).merge(tally)

    def counts(self, day: datetime.date, domain: str | None = None) -> list[PolicyCounts]:
        rows = [
            _freeze(k, t)
            for k, t in self._counts.items()
            if k.day == day and (domain is None or k.policy_domain == domain)
        ]
        return sorted(rows, key=_policy_sort)

    def domains(self, day: datetime.date) -> list[str]:
        return sorted({k.policy_domain for k in self._counts if k.day == day})

    def get_sent(self, day: datetime.date, domain: str) -> SentReport | None:
        return self._sent.get((day, domain))

    def put_sent(self, sent: SentReport) -> None:
        self._sent[(sent.day, sent.domain)] = sent

    def pending_sent(self) -> list[SentReport]:
        return sorted(
            (s for s in self._sent.values() if not s.finished),
            key=lambda s: (s.day, s.domain),
        )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tlsrpt_policy (
    id INTEGER PRIMARY KEY,
    day TEXT NOT NULL,
    domain TEXT NOT NULL,
    policy_type TEXT NOT NULL,
    policy_strings TEXT NOT NULL,
    successes INTEGER NOT NULL DEFAULT 0,
    UNIQUE (day, domain, policy_type, policy_strings)
);
CREATE TABLE IF NOT EXISTS tlsrpt_failure (
    policy_id INTEGER NOT NULL REFERENCES tlsrpt_policy(id),
    result_type TEXT NOT NULL,
    sending_mta_ip TEXT NOT NULL,
    receiving_mx_hostname TEXT NOT NULL,
    receiving_mx_helo TEXT NOT NULL,
    receiving_ip TEXT NOT NULL,
    failure_reason_code TEXT NOT NULL,
    additional_information TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (policy_id, result_type, sending_mta_ip, receiving_mx_hostname,
                 receiving_mx_helo, receiving_ip, failure_reason_code, additional_information)
);
CREATE TABLE IF NOT EXISTS tlsrpt_sent (
    day TEXT NOT NULL,
    domain TEXT NOT NULL,
    report_id TEXT NOT NULL,
    destinations_done TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_attempt REAL,
    next_retry REAL,
    last_error TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (day, domain)
);
"""


class SqliteReportStore:
    """A `ReportStore` in SQLite (WAL), safe to call from a worker thread (`CountingSink.run`)."""

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
            raise ReportStoreError(f"{self.path}: cannot open report store: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction; writers take the write lock up front so they never deadlock."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise ReportStoreError(f"{self.path}: {exc}") from exc

    def add_counts(self, batch: Batch) -> None:
        with self._transaction(write=True) as db:
            for key, tally in batch.items():
                strings = json.dumps(list(key.policy_strings))
                row = db.execute(
                    "INSERT INTO tlsrpt_policy"
                    " (day, domain, policy_type, policy_strings, successes)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (day, domain, policy_type, policy_strings)"
                    " DO UPDATE SET successes = successes + excluded.successes RETURNING id",
                    (
                        key.day.isoformat(),
                        key.policy_domain,
                        str(key.policy_type),
                        strings,
                        tally.successes,
                    ),
                ).fetchone()
                for f, count in tally.failures.items():
                    db.execute(
                        "INSERT INTO tlsrpt_failure VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT DO UPDATE SET count = count + excluded.count",
                        (
                            row[0],
                            str(f.result_type),
                            f.sending_mta_ip,
                            f.receiving_mx_hostname,
                            f.receiving_mx_helo,
                            f.receiving_ip,
                            f.failure_reason_code,
                            f.additional_information,
                            count,
                        ),
                    )

    def counts(self, day: datetime.date, domain: str | None = None) -> list[PolicyCounts]:
        with self._transaction() as db:
            policies = db.execute(
                "SELECT id, domain, policy_type, policy_strings, successes FROM tlsrpt_policy"
                " WHERE day = ? AND (? IS NULL OR domain = ?)",
                (day.isoformat(), domain, domain),
            ).fetchall()
            rows: list[PolicyCounts] = []
            for pid, dom, ptype, strings, successes in policies:
                tally = Tally(successes=successes)
                for r in db.execute(
                    "SELECT result_type, sending_mta_ip, receiving_mx_hostname, receiving_mx_helo,"
                    " receiving_ip, failure_reason_code, additional_information, count"
                    " FROM tlsrpt_failure WHERE policy_id = ?",
                    (pid,),
                ):
                    tally.failures[FailureKey(ResultType(r[0]), *r[1:7])] += r[7]
                key = PolicyKey(day, dom, PolicyType(ptype), tuple(json.loads(strings)))
                rows.append(_freeze(key, tally))
        return sorted(rows, key=_policy_sort)

    def domains(self, day: datetime.date) -> list[str]:
        with self._transaction() as db:
            found = db.execute(
                "SELECT DISTINCT domain FROM tlsrpt_policy WHERE day = ? ORDER BY domain",
                (day.isoformat(),),
            ).fetchall()
        return [d for (d,) in found]

    def get_sent(self, day: datetime.date, domain: str) -> SentReport | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM tlsrpt_sent WHERE day = ? AND domain = ?",
                (day.isoformat(), domain),
            ).fetchone()
        return _sent_from_row(row) if row else None

    def put_sent(self, sent: SentReport) -> None:
        with self._transaction(write=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO tlsrpt_sent VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sent.day.isoformat(),
                    sent.domain,
                    sent.report_id,
                    json.dumps(list(sent.destinations_done)),
                    sent.attempts,
                    sent.first_attempt,
                    sent.next_retry,
                    sent.last_error,
                    sent.status,
                ),
            )

    def pending_sent(self) -> list[SentReport]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM tlsrpt_sent WHERE status = 'pending' ORDER BY day, domain"
            ).fetchall()
        return [_sent_from_row(r) for r in rows]


def _sent_from_row(row: tuple[object, ...]) -> SentReport:
    day, domain, report_id, done, attempts, first, next_retry, error, status = row
    return SentReport(
        day=datetime.date.fromisoformat(str(day)),
        domain=str(domain),
        report_id=str(report_id),
        destinations_done=tuple(json.loads(str(done))),
        attempts=int(str(attempts)),
        first_attempt=float(str(first)) if first is not None else None,
        next_retry=float(str(next_retry)) if next_retry is not None else None,
        last_error=str(error),
        status=str(status),
    )


__all__ = [
    "Batch",
    "MemoryReportStore",
    "ReportStore",
    "SentReport",
    "SqliteReportStore",
    "Tally",
]
