"""`tlsrpt_emit.store.ReportStore` in SQL (SQLite or PostgreSQL): ``tlsrpt_`` tables.

Counts are increments (``INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n``), never
read-modify-write, so every relay of a fleet adds into the same rows and a day's report carries
the fleet's sum. Who sends a report is settled by a claim row per day and domain with a lease
(`claim`): on PostgreSQL the row is taken with ``FOR UPDATE SKIP LOCKED``, so of two relays
claiming together one wins and the other moves on; a relay that dies mid-send loses the claim when
its lease runs out.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import uuid
from collections.abc import Iterable

from relay.state.database import Database, Row, Tx
from relay.state.migrations import Steps, migrate
from tlsrpt_emit.errors import ReportStoreError
from tlsrpt_emit.model import FailureKey, PolicyCounts, PolicyKey, PolicyType, result_type_of
from tlsrpt_emit.store import Batch, SentReport, Tally, counts_sorted

COMPONENT = "tlsrpt"


def _schema(real: str, serial: str, count: str) -> tuple[str, ...]:
    return (
        "CREATE TABLE IF NOT EXISTS tlsrpt_policy ("
        f" id {serial}, day TEXT NOT NULL, domain TEXT NOT NULL,"
        " policy_type TEXT NOT NULL, policy_strings TEXT NOT NULL,"
        f" successes {count} NOT NULL DEFAULT 0,"
        " UNIQUE (day, domain, policy_type, policy_strings))",
        "CREATE TABLE IF NOT EXISTS tlsrpt_failure ("
        " policy_id INTEGER NOT NULL REFERENCES tlsrpt_policy(id),"
        " result_type TEXT NOT NULL, sending_mta_ip TEXT NOT NULL,"
        " receiving_mx_hostname TEXT NOT NULL, receiving_mx_helo TEXT NOT NULL,"
        " receiving_ip TEXT NOT NULL, failure_reason_code TEXT NOT NULL,"
        f" additional_information TEXT NOT NULL, count {count} NOT NULL,"
        " PRIMARY KEY (policy_id, result_type, sending_mta_ip, receiving_mx_hostname,"
        " receiving_mx_helo, receiving_ip, failure_reason_code, additional_information))",
        "CREATE TABLE IF NOT EXISTS tlsrpt_sent ("
        " day TEXT NOT NULL, domain TEXT NOT NULL, report_id TEXT NOT NULL,"
        " destinations_done TEXT NOT NULL, attempts INTEGER NOT NULL,"
        f" first_attempt {real}, next_retry {real}, last_error TEXT NOT NULL,"
        " status TEXT NOT NULL, PRIMARY KEY (day, domain))",
    )


def _claims(real: str) -> tuple[str, ...]:
    return (
        "CREATE TABLE IF NOT EXISTS tlsrpt_claim ("
        " day TEXT NOT NULL, domain TEXT NOT NULL, holder TEXT NOT NULL,"
        f" lease_until {real} NOT NULL, PRIMARY KEY (day, domain))",
    )


STEPS: Steps = {
    "sqlite": [_schema("REAL", "INTEGER PRIMARY KEY", "INTEGER"), _claims("REAL")],
    "postgresql": [
        _schema("DOUBLE PRECISION", "INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "BIGINT"),
        _claims("DOUBLE PRECISION"),
    ],
}

_SENT_COLUMNS = (
    "day, domain, report_id, destinations_done, attempts, first_attempt, next_retry,"
    " last_error, status"
)
_FAILURE_COLUMNS = (
    "result_type, sending_mta_ip, receiving_mx_hostname, receiving_mx_helo, receiving_ip,"
    " failure_reason_code, additional_information"
)


def _failure_tuple(f: FailureKey) -> tuple[str, ...]:
    return (
        str(f.result_type),
        f.sending_mta_ip,
        f.receiving_mx_hostname,
        f.receiving_mx_helo,
        f.receiving_ip,
        f.failure_reason_code,
        f.additional_information,
    )


def _policy_tuple(key: PolicyKey) -> tuple[str, str, str, str]:
    return (
        key.day.isoformat(),
        key.policy_domain,
        str(key.policy_type),
        json.dumps(list(key.policy_strings)),
    )


def default_holder() -> str:
    """This relay's name in claims: host, process id and a random part (pids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SqlReportStore:
    """A `ReportStore` in the state database; thread-safe (`CountingSink` writes from a thread).

    `holder` names this relay in claims (host name and process id by default).
    """

    def __init__(
        self, db: Database, *, holder: str | None = None, migrate_schema: bool = True
    ) -> None:
        self.db = db
        self.holder = holder or default_holder()
        if migrate_schema:
            migrate(db, COMPONENT, STEPS, ReportStoreError)

    def close(self) -> None:
        self.db.close()

    def add_counts(self, batch: Batch) -> None:
        # Rows in one order in every relay: two relays' batches never deadlock each other.
        with self.db.transaction(ReportStoreError, write=True) as tx:
            self.add_counts_in(tx, batch)

    @classmethod
    def add_counts_in(cls, tx: Tx, batch: Batch) -> None:
        """`add_counts` inside a transaction of the caller's (`relay.state.migrate`)."""
        for key in sorted(batch, key=_policy_tuple):
            cls._add(tx, key, batch[key])

    @staticmethod
    def _add(tx: Tx, key: PolicyKey, tally: Tally) -> None:
        row = tx.row(
            "INSERT INTO tlsrpt_policy (day, domain, policy_type, policy_strings, successes)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (day, domain, policy_type, policy_strings)"
            " DO UPDATE SET successes = tlsrpt_policy.successes + excluded.successes"
            " RETURNING id",
            (*_policy_tuple(key), tally.successes),
        )
        assert row is not None
        for f in sorted(tally.failures, key=_failure_tuple):
            tx.execute(
                f"INSERT INTO tlsrpt_failure (policy_id, {_FAILURE_COLUMNS}, count)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" ON CONFLICT (policy_id, {_FAILURE_COLUMNS})"
                " DO UPDATE SET count = tlsrpt_failure.count + excluded.count",
                (row[0], *_failure_tuple(f), tally.failures[f]),
            )

    def counts(self, day: datetime.date, domain: str | None = None) -> list[PolicyCounts]:
        with self.db.transaction(ReportStoreError) as tx:
            policies = tx.rows(
                "SELECT id, domain, policy_type, policy_strings, successes FROM tlsrpt_policy"
                " WHERE day = ? AND (CAST(? AS TEXT) IS NULL OR domain = ?)",
                (day.isoformat(), domain, domain),
            )
            failures = self._failures(tx, [p[0] for p in policies])
        tallies: list[tuple[PolicyKey, Tally]] = []
        for pid, dom, ptype, strings, successes in policies:
            tally = Tally(successes=int(successes))
            for r in failures.get(pid, []):
                tally.failures[FailureKey(result_type_of(r[0]), *r[1:7])] += int(r[7])
            tallies.append(
                (PolicyKey(day, dom, PolicyType(ptype), tuple(json.loads(strings))), tally)
            )
        return counts_sorted(tallies)

    def _failures(self, tx: Tx, ids: Iterable[int]) -> dict[int, list[Row]]:
        found: dict[int, list[Row]] = {}
        for pid in ids:
            found[pid] = tx.rows(
                f"SELECT {_FAILURE_COLUMNS}, count FROM tlsrpt_failure WHERE policy_id = ?",
                (pid,),
            )
        return found

    def domains(self, day: datetime.date) -> list[str]:
        with self.db.transaction(ReportStoreError) as tx:
            found = tx.rows(
                "SELECT DISTINCT domain FROM tlsrpt_policy WHERE day = ? ORDER BY domain",
                (day.isoformat(),),
            )
        return [str(d) for (d,) in found]

    def days(self) -> list[datetime.date]:
        """Every day with counts (for `stsguard state migrate`)."""
        with self.db.transaction(ReportStoreError) as tx:
            found = tx.rows("SELECT DISTINCT day FROM tlsrpt_policy ORDER BY day")
        return [datetime.date.fromisoformat(str(d)) for (d,) in found]

    def all_sent(self) -> list[SentReport]:
        """Every report's progress, finished or not (for `stsguard state migrate`)."""
        with self.db.transaction(ReportStoreError) as tx:
            rows = tx.rows(f"SELECT {_SENT_COLUMNS} FROM tlsrpt_sent ORDER BY day, domain")
        return [_sent_from_row(r) for r in rows]

    def get_sent(self, day: datetime.date, domain: str) -> SentReport | None:
        with self.db.transaction(ReportStoreError) as tx:
            row = tx.row(
                f"SELECT {_SENT_COLUMNS} FROM tlsrpt_sent WHERE day = ? AND domain = ?",
                (day.isoformat(), domain),
            )
        return _sent_from_row(row) if row else None

    def put_sent(self, sent: SentReport) -> None:
        with self.db.transaction(ReportStoreError, write=True) as tx:
            self.put_sent_in(tx, sent)

    @staticmethod
    def put_sent_in(tx: Tx, sent: SentReport) -> None:
        """`put_sent` inside a transaction of the caller's (`relay.state.migrate`)."""
        tx.execute(
            f"INSERT INTO tlsrpt_sent ({_SENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (day, domain) DO UPDATE SET report_id = excluded.report_id,"
            " destinations_done = excluded.destinations_done, attempts = excluded.attempts,"
            " first_attempt = excluded.first_attempt, next_retry = excluded.next_retry,"
            " last_error = excluded.last_error, status = excluded.status",
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
        with self.db.transaction(ReportStoreError) as tx:
            rows = tx.rows(
                f"SELECT {_SENT_COLUMNS} FROM tlsrpt_sent WHERE status = 'pending'"
                " ORDER BY day, domain"
            )
        return [_sent_from_row(r) for r in rows]

    def claim(self, day: datetime.date, domain: str, *, now: float, lease: float) -> bool:
        """Take the right to send this report until `now + lease`; False if another holds it."""
        key = (day.isoformat(), domain)
        with self.db.transaction(ReportStoreError, write=True) as tx:
            tx.execute(
                "INSERT INTO tlsrpt_claim (day, domain, holder, lease_until) VALUES (?, ?, '', 0)"
                " ON CONFLICT (day, domain) DO NOTHING",
                key,
            )
            lock = " FOR UPDATE SKIP LOCKED" if tx.dialect == "postgresql" else ""
            row = tx.row(
                f"SELECT lease_until FROM tlsrpt_claim WHERE day = ? AND domain = ?{lock}", key
            )
            if row is None or float(row[0]) > now:  # locked by a relay claiming now, or leased
                return False
            tx.execute(
                "UPDATE tlsrpt_claim SET holder = ?, lease_until = ? WHERE day = ? AND domain = ?",
                (self.holder, now + lease, *key),
            )
            return True

    def release(self, day: datetime.date, domain: str) -> None:
        """Give a claim back (after the attempt is recorded), so a retry need not wait."""
        with self.db.transaction(ReportStoreError, write=True) as tx:
            tx.execute(
                "UPDATE tlsrpt_claim SET lease_until = 0"
                " WHERE day = ? AND domain = ? AND holder = ?",
                (day.isoformat(), domain, self.holder),
            )


def _sent_from_row(row: Row) -> SentReport:
    day, domain, report_id, done, attempts, first, next_retry, error, status = row
    return SentReport(
        day=datetime.date.fromisoformat(str(day)),
        domain=str(domain),
        report_id=str(report_id),
        destinations_done=tuple(json.loads(str(done))),
        attempts=int(attempts),
        first_attempt=float(first) if first is not None else None,
        next_retry=float(next_retry) if next_retry is not None else None,
        last_error=str(error),
        status=str(status),
    )
