"""Where TLS-RPT counts and the progress of sent reports are kept: the `ReportStore` Protocol,
and a memory implementation for tests.

The SQL implementation (SQLite, or PostgreSQL shared by a fleet of relays) is
`relay.state.report_store.SqlReportStore`. Counts arrive in batches (`CountingSink.flush`), never
one write per session, and are added to what is stored (a fleet's relays add into the same rows).
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tlsrpt_emit.model import FailureKey, PolicyCounts, PolicyKey


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

    def claim(self, day: datetime.date, domain: str, *, now: float, lease: float) -> bool:
        """Take the sending of this report until `now + lease`; False while another holds it
        (another relay of a fleet sharing the store, or another task)."""
        ...

    def release(self, day: datetime.date, domain: str) -> None:
        """Give back a claim taken with `claim`."""
        ...


def counts_sorted(tallies: Iterable[tuple[PolicyKey, Tally]]) -> list[PolicyCounts]:
    """Frozen `PolicyCounts` in report order (one sort for every implementation)."""
    return sorted((_freeze(k, t) for k, t in tallies), key=_policy_sort)


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
        self._claims: dict[tuple[datetime.date, str], float] = {}

    def add_counts(self, batch: Batch) -> None:
        for key, tally in batch.items():
            self._counts.setdefault(key, Tally()).merge(tally)

    def counts(self, day: datetime.date, domain: str | None = None) -> list[PolicyCounts]:
        return counts_sorted(
            (k, t)
            for k, t in self._counts.items()
            if k.day == day and (domain is None or k.policy_domain == domain)
        )

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

    def claim(self, day: datetime.date, domain: str, *, now: float, lease: float) -> bool:
        if self._claims.get((day, domain), 0.0) > now:
            return False
        self._claims[(day, domain)] = now + lease
        return True

    def release(self, day: datetime.date, domain: str) -> None:
        self._claims.pop((day, domain), None)


__all__ = [
    "Batch",
    "MemoryReportStore",
    "ReportStore",
    "SentReport",
    "Tally",
    "counts_sorted",
]
