"""The in-memory front of a shared (PostgreSQL) state: mail keeps flowing through an outage.

Each store answers from memory what it read less than `refresh` seconds ago, so a cached policy
decision or a remembered-TLS look-up costs no query per message, and a relay sees what another
relay of the fleet wrote within `refresh` seconds. While the database is down (`Availability`):
policies and remembered TLS come from memory (a policy not held is fetched as if never seen);
writes are kept and written when it is back; TLS-RPT counts are summed in memory, bounded by
`MAX_PENDING_ROWS` rows, and written when it is back (lost if the relay stops first, and counted
in the log line that says so); reading counts and claiming reports fail fast, so no report is sent
from a partial view. No caller waits for a dead database: a probe thread tries it every
`retry_interval` seconds. The outage is logged once (`state.unavailable`), its end once
(`state.available`); every write it kept back is counted (`FailedWrites`).
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import structlog

from detect.history import HostHistory, host_key, merged, updated
from mtasts.state import CacheEntry, FetchFailure
from relay.state.availability import STORE_ERRORS, Availability
from relay.state.failed_writes import StateStore, WriteFailure
from relay.state.history_store import SqlTlsHistoryStore
from relay.state.policy_store import SqlPolicyStore
from relay.state.report_store import SqlReportStore
from relay.state.unsaved import MAX_REMEMBERED, Unsaved, UnsavedCounts
from tlsrpt_emit.errors import ReportStoreError
from tlsrpt_emit.model import PolicyCounts
from tlsrpt_emit.store import Batch, SentReport

log = structlog.get_logger(__name__)

T = TypeVar("T")
K = TypeVar("K")

REFRESH = 30.0  # seconds an answer read from the database is reused


class _Recent(Generic[K, T]):
    """Answers read from the database, with the time they were read."""

    def __init__(self, clock: Callable[[], float], refresh: float) -> None:
        self.clock = clock
        self.refresh = refresh
        self._items: dict[K, tuple[T | None, float]] = {}
        self._lock = threading.Lock()

    def fresh(self, key: K) -> tuple[bool, T | None]:
        found = self._items.get(key)
        if found is not None and self.clock() - found[1] < self.refresh:
            return True, found[0]
        return False, found[0] if found is not None else None

    def held(self, key: K) -> T | None:
        found = self._items.get(key)
        return found[0] if found is not None else None

    def keep(self, key: K, value: T | None, read_at: float | None = None) -> None:
        now = self.clock()
        with self._lock:
            if len(self._items) >= MAX_REMEMBERED:
                self._items = {k: v for k, v in self._items.items() if now - v[1] < self.refresh}
            self._items[key] = (value, now if read_at is None else read_at)

    def drop(self, key: K) -> None:
        self._items.pop(key, None)

    def drop_where(self, matches: Callable[[K], bool]) -> None:
        for key in [k for k in list(self._items) if matches(k)]:
            self._items.pop(key, None)

    def read_at(self, key: K) -> float:
        """When `key` was last read from the database (0: never)."""
        found = self._items.get(key)
        return found[1] if found is not None else 0.0

    def values(self) -> list[T]:
        return [v for v, _ in self._items.values() if v is not None]


class SharedPolicyStore:
    """`PolicyStore` over the shared database, with the memory front described above."""

    def __init__(
        self, backend: SqlPolicyStore, availability: Availability, *, refresh: float = REFRESH
    ) -> None:
        self.backend = backend
        self.availability = availability
        clock = availability.clock
        self._entries: _Recent[str, CacheEntry] = _Recent(clock, refresh)
        self._failures: _Recent[tuple[str, str], FetchFailure] = _Recent(clock, refresh)
        self._unsaved: Unsaved[str, CacheEntry] = Unsaved(lambda _old, new: new)
        availability.on_recovery(self._resync)

    def get(self, domain: str) -> CacheEntry | None:
        fresh, held = self._entries.fresh(domain)
        if fresh:
            return held
        ok, entry = self.availability.call(self.backend.get, domain)
        if not ok:
            return held  # the outage: what we hold, or None (and the policy is fetched)
        self._entries.keep(domain, entry)
        return entry

    def put(self, entry: CacheEntry) -> None:
        self._entries.keep(entry.domain, entry)
        if not self.availability.write(StateStore.POLICY, self.backend.put, entry):
            self._unsaved.keep(entry.domain, entry)

    def delete(self, domain: str) -> None:
        self._entries.drop(domain)
        self._unsaved.drop(domain)
        self.backend.delete(domain)

    def list(self) -> list[CacheEntry]:
        ok, rows = self.availability.call(self.backend.list)
        if ok and rows is not None:
            return rows
        return sorted(self._entries.values(), key=lambda e: e.domain)

    def record_failure(self, domain: str, failure: FetchFailure) -> None:
        self._failures.keep((domain, failure.record_id), failure)
        self.availability.write(StateStore.POLICY, self.backend.record_failure, domain, failure)

    def last_failure(self, domain: str, record_id: str) -> FetchFailure | None:
        fresh, held = self._failures.fresh((domain, record_id))
        if fresh:
            return held
        ok, failure = self.availability.call(self.backend.last_failure, domain, record_id)
        if not ok:
            return held
        self._failures.keep((domain, record_id), failure)
        return failure

    def clear_failures(self, domain: str) -> None:
        self._failures.drop_where(lambda key: key[0] == domain)
        self.availability.write(StateStore.POLICY, self.backend.clear_failures, domain)

    def _resync(self) -> None:
        held = self._unsaved.take()
        try:
            for domain, entry in list(held.items()):
                self.backend.put(entry)
                del held[domain]
        except STORE_ERRORS:
            self._unsaved.put_back(held)
            raise


class SharedTlsHistoryStore:
    """`TlsHistoryStore` over the shared database, with the memory front described above."""

    def __init__(
        self,
        backend: SqlTlsHistoryStore,
        availability: Availability,
        *,
        refresh: float = REFRESH,
    ) -> None:
        self.backend = backend
        self.availability = availability
        self._hosts: _Recent[str, HostHistory] = _Recent(availability.clock, refresh)
        self._unsaved: Unsaved[str, HostHistory] = Unsaved(merged)
        availability.on_recovery(self._resync)

    def get(self, host: str) -> HostHistory | None:
        key = host_key(host)
        fresh, held = self._hosts.fresh(key)
        if fresh:
            return held
        ok, stored = self.availability.call(self.backend.get, key)
        if not ok:
            return held
        unsaved = self._unsaved.get(key)
        found = merged(stored, unsaved) if unsaved is not None else stored
        self._hosts.keep(key, found)
        return found

    def record(self, host: str, *, offered_starttls: bool, valid_cert: bool, now: float) -> None:
        key = host_key(host)
        seen = updated(None, key, offered_starttls=offered_starttls, valid_cert=valid_cert, now=now)
        _, held = self._hosts.fresh(key)
        # Keep the time it was read: a stale answer is still read again for others' news.
        self._hosts.keep(key, merged(held, seen), read_at=self._hosts.read_at(key))
        if not self.availability.write(StateStore.HISTORY, self.backend.put, seen):
            self._unsaved.keep(key, seen)

    def forget(self, host: str) -> bool:
        key = host_key(host)
        self._hosts.drop(key)
        self._unsaved.drop(key)
        return self.backend.forget(key)

    def all(self) -> list[HostHistory]:
        ok, rows = self.availability.call(self.backend.all)
        if ok and rows is not None:
            return rows
        return sorted(self._hosts.values(), key=lambda h: h.host)

    def _resync(self) -> None:
        unsaved = self._unsaved.take()
        try:
            for key, history in list(unsaved.items()):
                self.backend.put(history)
                del unsaved[key]
        except STORE_ERRORS:
            self._unsaved.put_back(unsaved)
            raise


class SharedReportStore:
    """`ReportStore` over the shared database: counts buffered through an outage (bounded);
    everything else needs the database (fails fast while it is down)."""

    def __init__(self, backend: SqlReportStore, availability: Availability) -> None:
        self.backend = backend
        self.availability = availability
        self._pending = UnsavedCounts()
        availability.on_recovery(self._resync)

    @property
    def lost(self) -> int:
        """Sessions dropped because the buffer was full."""
        return self._pending.lost

    @property
    def buffered(self) -> int:
        """Sessions counted but not yet in the database."""
        return self._pending.buffered

    def add_counts(self, batch: Batch) -> None:
        if not self.availability.write(StateStore.TLSRPT, self.backend.add_counts, batch):
            self._pending.add(batch)

    def _resync(self) -> None:
        pending = self._pending.take()
        if not pending:
            return
        try:
            self.backend.add_counts(pending)
        except STORE_ERRORS:
            self._pending.put_back(pending)
            raise
        sessions = sum(t.successes + t.failures.total() for t in pending.values())
        log.info("state.counts_written", sessions=sessions)

    def _need(self, fn: Callable[..., T], *args: Any, write: bool = False, **kwargs: Any) -> T:
        """`fn` on the database, raising at once while it is down; a `write` that could not be
        made is counted."""
        failed_writes = self.availability.failed_writes
        if not self.availability.up:
            if write:
                failed_writes.failed(StateStore.TLSRPT, None, kind=WriteFailure.UNAVAILABLE)
            raise ReportStoreError(f"{self.availability.db.describe()}: database unavailable")
        try:
            return fn(*args, **kwargs)
        except ReportStoreError as exc:
            if write:
                failed_writes.failed(StateStore.TLSRPT, exc)
            self.availability.failed(exc)
            raise

    def counts(self, day: datetime.date, domain: str | None = None) -> list[PolicyCounts]:
        return self._need(self.backend.counts, day, domain)

    def domains(self, day: datetime.date) -> list[str]:
        return self._need(self.backend.domains, day)

    def get_sent(self, day: datetime.date, domain: str) -> SentReport | None:
        return self._need(self.backend.get_sent, day, domain)

    def put_sent(self, sent: SentReport) -> None:
        self._need(self.backend.put_sent, sent, write=True)

    def pending_sent(self) -> list[SentReport]:
        return self._need(self.backend.pending_sent)

    def claim(self, day: datetime.date, domain: str, *, now: float, lease: float) -> bool:
        return self._need(self.backend.claim, day, domain, now=now, lease=lease, write=True)

    def release(self, day: datetime.date, domain: str) -> None:
        self._need(self.backend.release, day, domain, write=True)

    def close(self) -> None:
        """Log what an outage still holds (those counts are lost with this process)."""
        if self._pending:
            log.error("state.counts_lost", sessions=self.buffered, reason="database unavailable")
