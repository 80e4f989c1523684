"""What a store kept in memory because the database would not take it, bounded, to be written
when it does (`relay.state.shared` for an outage of PostgreSQL, `relay.state.failsafe` for an
SQLite file that cannot be written)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

from tlsrpt_emit.model import PolicyKey
from tlsrpt_emit.store import Batch, Tally

log = structlog.get_logger(__name__)

K = TypeVar("K")
V = TypeVar("V")

MAX_REMEMBERED = 100_000  # entries held per store before new keys are refused
MAX_PENDING_ROWS = 100_000  # distinct TLS-RPT counter rows buffered


class Unsaved(Generic[K, V]):
    """One value per key not yet written; a new value for a held key is `merge`d into it. At
    `limit` keys, new keys are not kept (their write is lost; the old ones are still written)."""

    def __init__(self, merge: Callable[[V | None, V], V], limit: int = MAX_REMEMBERED) -> None:
        self._merge = merge
        self._limit = limit
        self._items: dict[K, V] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def keep(self, key: K, value: V) -> bool:
        """False when the buffer is full and `key` is not in it."""
        with self._lock:
            if key not in self._items and len(self._items) >= self._limit:
                return False
            self._items[key] = self._merge(self._items.get(key), value)
            return True

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def drop(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def take(self) -> dict[K, V]:
        """Everything held, emptying the buffer (`put_back` what could not be written)."""
        with self._lock:
            items, self._items = self._items, {}
        return items

    def put_back(self, items: dict[K, V]) -> None:
        for key, value in items.items():
            self.keep(key, value)


class UnsavedCounts:
    """TLS-RPT counts not yet written, summed per row, at most `limit` rows; sessions that
    did not fit are lost and counted in `lost` (logged once: `state.counts_buffer_full`)."""

    def __init__(self, limit: int = MAX_PENDING_ROWS) -> None:
        self._limit = limit
        self._pending: dict[PolicyKey, Tally] = {}
        self._rows = 0
        self.lost = 0
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._pending)

    @property
    def buffered(self) -> int:
        """Sessions held."""
        return sum(t.successes + t.failures.total() for t in list(self._pending.values()))

    def add(self, batch: Batch) -> None:
        with self._lock:
            for key, tally in batch.items():
                pending = self._pending.get(key)
                new_rows = (pending is None) + sum(
                    1 for f in tally.failures if pending is None or f not in pending.failures
                )
                if self._rows + new_rows > self._limit:
                    if not self.lost:
                        log.error("state.counts_buffer_full", rows=self._rows)
                    self.lost += tally.successes + tally.failures.total()
                    continue
                self._pending.setdefault(key, Tally()).merge(tally)
                self._rows += new_rows

    def take(self) -> dict[PolicyKey, Tally]:
        with self._lock:
            pending, self._pending, self._rows = self._pending, {}, 0
        return pending

    def put_back(self, pending: dict[PolicyKey, Tally]) -> None:
        self.add(pending)
