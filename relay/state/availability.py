"""Whether the shared (PostgreSQL) state answers: a store asks `Availability` to read or write,
and while the database is down nothing waits for it. A probe thread tries it every
`retry_interval` seconds; when it is back, what each store kept is written (`on_recovery`). The
outage is logged once (`state.unavailable`), its end once (`state.available`); every write not
made is counted (`FailedWrites`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from detect.errors import HistoryStoreError
from mtasts.errors import PolicyStoreError
from relay.state.database import Database, StateError
from relay.state.failed_writes import FailedWrites, StateStore, WriteFailure
from tlsrpt_emit.errors import ReportStoreError

log = structlog.get_logger(__name__)

T = TypeVar("T")

RETRY_INTERVAL = 5.0  # seconds between tries of a database that is down
STORE_ERRORS = (PolicyStoreError, HistoryStoreError, ReportStoreError, StateError)


class Availability:
    """Whether the shared database answers; logs the outage once and its end once."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float],
        retry_interval: float = RETRY_INTERVAL,
        failed_writes: FailedWrites | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.retry_interval = retry_interval
        self.failed_writes = failed_writes or FailedWrites()
        self._up = True
        self._since = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._probe: threading.Thread | None = None
        self._resyncs: list[Callable[[], None]] = []
        self.settled = threading.Event()  # set while up with nothing kept back (tests wait on it)
        self.settled.set()

    @property
    def up(self) -> bool:
        return self._up

    def on_recovery(self, resync: Callable[[], None]) -> None:
        """`resync()` writes what a store kept while the database was down."""
        self._resyncs.append(resync)

    def call(self, fn: Callable[..., T], *args: Any) -> tuple[bool, T | None]:
        """(True, fn(*args)); (False, None) without calling while down, or when it fails."""
        if not self._up:
            return False, None
        try:
            return True, fn(*args)
        except STORE_ERRORS as exc:
            self.failed(exc)
            return False, None

    def write(self, store: StateStore, fn: Callable[..., object], *args: Any) -> bool:
        """`call` for a write: one that is not made (down, or failing) is counted."""
        if not self._up:
            self.failed_writes.failed(store, None, kind=WriteFailure.UNAVAILABLE)
            return False
        try:
            fn(*args)
        except STORE_ERRORS as exc:
            self.failed_writes.failed(store, exc)
            self.failed(exc)
            return False
        return True

    def failed(self, exc: Exception) -> None:
        with self._lock:
            if not self._up or self._stop.is_set():
                return
            self._up = False
            self.settled.clear()
            self._since = self.clock()
            log.error("state.unavailable", database=self.db.describe(), error=str(exc))
            self._probe = threading.Thread(
                target=self._wait_for_db, name="state-probe", daemon=True
            )
            self._probe.start()

    def _wait_for_db(self) -> None:
        while not self._stop.wait(self.retry_interval):
            try:
                with self.db.transaction() as tx:
                    tx.execute("SELECT 1")
            except Exception:  # any failure of the probe means: still down
                continue
            self._up = True  # writes from now on go to the database ...
            if not self._resync_all():  # ... and what was kept follows them
                self._up = False
                continue
            log.warning(
                "state.available",
                database=self.db.describe(),
                down_for=round(self.clock() - self._since, 1),
            )
            for store in StateStore:
                self.failed_writes.resumed(store)
            self.settled.set()
            return

    def _resync_all(self) -> bool:
        """Write what each store kept; one whose writes still fail (a table that answers with
        errors) keeps its own and does not hold back the others'."""
        done = True
        for resync in self._resyncs:
            try:
                resync()
            except STORE_ERRORS:
                done = False
        return done

    def close(self) -> None:
        self._stop.set()
        if self._probe is not None:
            self._probe.join(timeout=2 * self.retry_interval)
