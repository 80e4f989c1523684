"""`CountingSink`: the relay's `ResultSink` that counts sessions without blocking delivery.

`record()` only adds to an in-memory batch; `flush()` writes the batch to the store in one
transaction, and `run()` flushes every `flush_interval` seconds (in a worker thread, so SQLite never
blocks the event loop). A crash loses at most the last `flush_interval` seconds of counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from tlsrpt_emit.errors import ReportStoreError
from tlsrpt_emit.model import FailureKey, PolicyKey, SessionResult, split_diagnostics, utc_day
from tlsrpt_emit.names import a_label
from tlsrpt_emit.store import ReportStore, Tally

log = structlog.get_logger(__name__)


def count_into(batch: dict[PolicyKey, Tally], result: SessionResult) -> None:
    """Add one session result to a batch (pure apart from mutating `batch`)."""
    key = PolicyKey(
        day=utc_day(result.when),
        policy_domain=a_label(result.policy_domain),  # IDN-01: SMTPUTF8 recipients give U-labels
        policy_type=result.policy_type,
        policy_strings=result.policy_strings,
    )
    tally = batch.setdefault(key, Tally())
    if result.result_type is None:
        tally.successes += 1
        return
    reason_code, additional = split_diagnostics(
        result.failure_reason_code, result.additional_information
    )
    tally.failures[
        FailureKey(
            result_type=result.result_type,
            sending_mta_ip=result.sending_mta_ip,
            receiving_mx_hostname=a_label(result.mx_host),
            receiving_mx_helo=result.receiving_mx_helo,
            receiving_ip=result.receiving_ip,
            failure_reason_code=reason_code,
            additional_information=additional,
        )
    ] += 1


class CountingSink:
    """Buffers session results and writes them to a `ReportStore` in batches."""

    def __init__(
        self,
        store: ReportStore,
        *,
        clock: Callable[[], float],
        flush_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.flush_interval = flush_interval
        self.last_flush: float | None = None
        self._batch: dict[PolicyKey, Tally] = {}

    @property
    def buffered(self) -> int:
        """Sessions recorded but not yet written."""
        return sum(t.successes + t.failures.total() for t in self._batch.values())

    def record(self, result: SessionResult) -> None:
        """Count one session; never does I/O."""
        count_into(self._batch, result)

    def flush(self) -> None:
        """Write the buffered counts in one transaction; on failure they stay buffered."""
        batch, self._batch = self._batch, {}
        if not batch:
            return
        try:
            self.store.add_counts(batch)
        except ReportStoreError:
            for key, tally in batch.items():  # keep them for the next try
                self._batch.setdefault(key, Tally()).merge(tally)
            raise
        self.last_flush = self.clock()

    async def _flush_in_thread(self) -> None:
        batch, self._batch = self._batch, {}
        if not batch:
            return
        try:
            await asyncio.to_thread(self.store.add_counts, batch)
        except ReportStoreError as exc:
            log.warning("tlsrpt.flush_failed", error=str(exc))
            for key, tally in batch.items():
                self._batch.setdefault(key, Tally()).merge(tally)
            return
        self.last_flush = self.clock()

    async def run(self) -> None:
        """Flush every `flush_interval` seconds until cancelled; flush once more on the way out."""
        try:
            while True:
                await asyncio.sleep(self.flush_interval)
                await self._flush_in_thread()
        finally:
            try:
                self.flush()
            except ReportStoreError as exc:
                log.error("tlsrpt.final_flush_failed", error=str(exc), lost=self.buffered)
