"""The relay's SQLite stores, whose writes never fail their caller.

A state file that cannot be written (the disk filled up after start, the file or its file system
turned read-only) must not stop or repeat a delivery: a cached policy, a remembered-TLS record or
a TLS-RPT count that cannot be written is kept in memory (bounded: `relay.state.unsaved`),
counted (`FailedWrites`), and written with the next write that succeeds. Reads still raise: a
read is made before a message is sent, where the queue defers it. The CLI uses the SQL stores
directly, so its writes fail loudly.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from detect.errors import HistoryStoreError
from detect.history import HostHistory, host_key, merged, updated
from mtasts.errors import PolicyStoreError
from mtasts.state import CacheEntry, FetchFailure
from relay.state.failed_writes import FailedWrites, StateStore
from relay.state.history_store import SqlTlsHistoryStore
from relay.state.policy_store import SqlPolicyStore
from relay.state.report_store import SqlReportStore
from relay.state.unsaved import Unsaved, UnsavedCounts
from tlsrpt_emit.errors import ReportStoreError
from tlsrpt_emit.model import PolicyCounts
from tlsrpt_emit.store import Batch, SentReport, Tally

log = structlog.get_logger(__name__)

T = TypeVar("T")


def _newer(_old: CacheEntry | None, new: CacheEntry) -> CacheEntry:
    return new


class FailsafePolicyStore:
    """`PolicyStore`: policies that could not be cached are held and answered from memory."""

    def __init__(self, backend: SqlPolicyStore, failed: FailedWrites) -> None:
        self.backend = backend
        self.failed = failed
        self._unsaved: Unsaved[str, CacheEntry] = Unsaved(_newer)

    def get(self, domain: str) -> CacheEntry | None:
        held = self._unsaved.get(domain) if len(self._unsaved) else None
        return held if held is not None else self.backend.get(domain)

    def put(self, entry: CacheEntry) -> None:
        try:
            self.backend.put(entry)
        except PolicyStoreError as exc:
            self._unsaved.keep(entry.domain, entry)
            self.failed.failed(StateStore.POLICY, exc)
            return
        self._unsaved.drop(entry.domain)
        self._replay()

    def delete(self, domain: str) -> None:
        self._unsaved.drop(domain)
        self.backend.delete(domain)

    def list(self) -> list[CacheEntry]:
        return self.backend.list()

    def record_failure(self, domain: str, failure: FetchFailure) -> None:
        self._write(self.backend.record_failure, domain, failure)

    def last_failure(self, domain: str, record_id: str) -> FetchFailure | None:
        return self.backend.last_failure(domain, record_id)

    def clear_failures(self, domain: str) -> None:
        self._write(self.backend.clear_failures, domain)

    def _write(self, fn: Any, *args: Any) -> None:
        """A write not worth keeping (a fetch failure: at worst the policy is fetched again)."""
        try:
            fn(*args)
        except PolicyStoreError as exc:
            self.failed.failed(StateStore.POLICY, exc)

    def close(self) -> None:
        """One last try at writing what is held (the disk may have room again)."""
        if len(self._unsaved):
            self._replay()

    def _replay(self) -> None:
        if not len(self._unsaved):
            self.failed.resumed(StateStore.POLICY)
            return
        held = self._unsaved.take()
        try:
            for domain, entry in list(held.items()):
                self.backend.put(entry)
                del held[domain]
        except PolicyStoreError:
            self._unsaved.put_back(held)
            return
        self.failed.resumed(StateStore.POLICY, replayed=len(held))


class FailsafeTlsHistoryStore:
    """`TlsHistoryStore`: records that could not be written are held, merged into what is read,
    and written with the next record that is."""

    def __init__(self, backend: SqlTlsHistoryStore, failed: FailedWrites) -> None:
        self.backend = backend
        self.failed = failed
        self._unsaved: Unsaved[str, HostHistory] = Unsaved(merged)

    def get(self, host: str) -> HostHistory | None:
        stored = self.backend.get(host)
        held = self._unsaved.get(host_key(host)) if len(self._unsaved) else None
        return merged(stored, held) if held is not None else stored

    def record(self, host: str, *, offered_starttls: bool, valid_cert: bool, now: float) -> None:
        key = host_key(host)
        seen = updated(None, key, offered_starttls=offered_starttls, valid_cert=valid_cert, now=now)
        try:
            self.backend.put(seen)
        except HistoryStoreError as exc:
            self._unsaved.keep(key, seen)
            self.failed.failed(StateStore.HISTORY, exc)
            return
        self._replay()

    def forget(self, host: str) -> bool:
        self._unsaved.drop(host_key(host))
        return self.backend.forget(host)

    def all(self) -> list[HostHistory]:
        return self.backend.all()

    def close(self) -> None:
        """One last try at writing what is held (the disk may have room again)."""
        if len(self._unsaved):
            self._replay()

    def _replay(self) -> None:
        if not len(self._unsaved):
            self.failed.resumed(StateStore.HISTORY)
            return
        held = self._unsaved.take()
        try:
            for key, history in list(held.items()):
                self.backend.put(history)
                del held[key]
        except HistoryStoreError:
            self._unsaved.put_back(held)
            return
        self.failed.resumed(StateStore.HISTORY, replayed=len(held))


class FailsafeReportStore:
    """`ReportStore`: counts that could not be written are summed in memory (bounded) and
    written with the next batch that is; the daily sender's reads and claims still raise."""

    def __init__(self, backend: SqlReportStore, failed: FailedWrites) -> None:
        self.backend = backend
        self.failed = failed
        self._pending = UnsavedCounts()

    @property
    def lost(self) -> int:
        """Sessions dropped because the buffer was full."""
        return self._pending.lost

    def add_counts(self, batch: Batch) -> None:
        replayed = 0
        if self._pending:
            held = self._pending.take()
            replayed = sum(t.successes + t.failures.total() for t in held.values())
            for key, tally in batch.items():
                held.setdefault(key, Tally()).merge(tally)
            batch = held
        try:
            self.backend.add_counts(batch)
        except ReportStoreError as exc:
            self._pending.add(batch)
            self.failed.failed(StateStore.TLSRPT, exc)
            return
        self.failed.resumed(StateStore.TLSRPT, replayed=replayed)

    def close(self) -> None:
        """One last try at writing the counts held; log those that are lost with this process."""
        if self._pending:
            self.add_counts({})
        if self._pending:
            log.error("state.counts_lost", sessions=self._pending.buffered, reason="not writable")

    def counts(self, day: datetime.date, domain: str | None = None) -> list[PolicyCounts]:
        return self.backend.counts(day, domain)

    def domains(self, day: datetime.date) -> list[str]:
        return self.backend.domains(day)

    def get_sent(self, day: datetime.date, domain: str) -> SentReport | None:
        return self.backend.get_sent(day, domain)

    def put_sent(self, sent: SentReport) -> None:
        self._counted(lambda: self.backend.put_sent(sent))

    def pending_sent(self) -> list[SentReport]:
        return self.backend.pending_sent()

    def claim(self, day: datetime.date, domain: str, *, now: float, lease: float) -> bool:
        return self._counted(lambda: self.backend.claim(day, domain, now=now, lease=lease))

    def release(self, day: datetime.date, domain: str) -> None:
        self._counted(lambda: self.backend.release(day, domain))

    def _counted(self, write: Callable[[], T]) -> T:
        """A write the daily sender needs done (it retries): counted when it fails, and raised."""
        try:
            return write()
        except ReportStoreError as exc:
            self.failed.failed(StateStore.TLSRPT, exc)
            raise
