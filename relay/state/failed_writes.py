"""Writes the state could not make: why (`classify`), counted and logged once (`FailedWrites`).

A state store that cannot be written (a full disk, a read-only file, PostgreSQL down or
erroring) never stops mail: the relay's stores catch the error, keep what can be written later
and count it here, as ``stsguard_state_errors_total{store,kind}``. Each (store, kind) is logged
once (`state.write_failed`) until the store's writes succeed again (`state.writes_resumed`).
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections.abc import Callable
from enum import StrEnum

import structlog

log = structlog.get_logger(__name__)


class StateStore(StrEnum):
    """The store a write was meant for (a metric label)."""

    POLICY = "policy"
    HISTORY = "history"
    TLSRPT = "tlsrpt"


class WriteFailure(StrEnum):
    """Why a write failed, as a bounded metric label."""

    FULL = "full"  # no space left: SQLITE_FULL, ENOSPC, PostgreSQL 53100
    UNAVAILABLE = "unavailable"  # no connection, locked, the shared database is down
    READONLY = "readonly"  # a read-only file or file system, a read-only transaction
    OTHER = "other"


_ERRNO = {
    errno.ENOSPC: WriteFailure.FULL,
    errno.EDQUOT: WriteFailure.FULL,
    errno.EROFS: WriteFailure.READONLY,
    errno.EACCES: WriteFailure.READONLY,
}
_SQLITE = {  # prefixes of `sqlite_errorname` (extended codes share the prefix)
    "SQLITE_FULL": WriteFailure.FULL,
    "SQLITE_READONLY": WriteFailure.READONLY,
    "SQLITE_PERM": WriteFailure.READONLY,
    "SQLITE_BUSY": WriteFailure.UNAVAILABLE,
    "SQLITE_LOCKED": WriteFailure.UNAVAILABLE,
    "SQLITE_CANTOPEN": WriteFailure.UNAVAILABLE,
}
_SQLSTATE = {  # PostgreSQL error codes (appendix A), by prefix
    "53100": WriteFailure.FULL,
    "25006": WriteFailure.READONLY,
    "08": WriteFailure.UNAVAILABLE,
    "57P": WriteFailure.UNAVAILABLE,
}


def classify(exc: BaseException) -> WriteFailure:
    """The kind of a store error, from the driver error it was translated from (`__cause__`)."""
    seen: BaseException | None = exc
    for _ in range(5):  # the chain is short: our error <- the driver's <- maybe an OSError
        if seen is None:
            break
        kind = _kind_of(seen)
        if kind is not None:
            return kind
        seen = seen.__cause__ or seen.__context__
    return WriteFailure.OTHER


def _kind_of(exc: BaseException) -> WriteFailure | None:
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        return next((k for p, k in _SQLITE.items() if name.startswith(p)), None)
    if isinstance(exc, OSError) and exc.errno in _ERRNO:
        return _ERRNO[exc.errno]
    if type(exc).__module__.startswith(("psycopg", "psycopg_pool")):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        found = next((k for p, k in _SQLSTATE.items() if sqlstate.startswith(p)), None)
        if found is not None:
            return found
        # No SQLSTATE: the client's own failure (no connection, pool timeout).
        names = {c.__name__ for c in type(exc).__mro__}
        return WriteFailure.UNAVAILABLE if "OperationalError" in names else None
    return None


class FailedWrites:
    """Counts failed state writes by store and kind (`count`), logging each pair once until
    that store's writes succeed again; thread-safe (stores write from worker threads)."""

    def __init__(self, count: Callable[[str, str, float], None] | None = None) -> None:
        """`count(store, kind, writes)`; called with 0 for each pair first (a bounded set of
        series, each shown from the start)."""
        self._count = count
        self._told: set[tuple[StateStore, WriteFailure]] = set()
        self._lock = threading.Lock()
        if count is not None:
            for store in StateStore:
                for kind in WriteFailure:
                    count(str(store), str(kind), 0)

    def failed(
        self, store: StateStore, exc: BaseException | None, *, kind: WriteFailure | None = None
    ) -> WriteFailure:
        """One write to `store` failed with `exc` (or for the known reason `kind`)."""
        found = kind or (classify(exc) if exc is not None else WriteFailure.OTHER)
        if self._count is not None:
            self._count(str(store), str(found), 1)
        with self._lock:
            first = (store, found) not in self._told
            self._told.add((store, found))
        if first:
            log.error(
                "state.write_failed",
                store=str(store),
                kind=str(found),
                error=str(exc) if exc is not None else str(found),
            )
        return found

    def resumed(self, store: StateStore, *, replayed: int = 0) -> None:
        """A write to `store` succeeded: say so once after failures (with what was caught up)."""
        if not self._told:
            return
        with self._lock:
            kinds = sorted(str(k) for s, k in self._told if s is store)
            self._told = {(s, k) for s, k in self._told if s is not store}
        if kinds:
            log.warning("state.writes_resumed", store=str(store), after=kinds, replayed=replayed)
