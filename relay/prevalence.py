"""Downgrade prevalence from the relay's own sessions, written behind (`detect.prevalence`).

`record` counts a session in memory; `run` adds the counts to the state store every
`flush_interval` seconds in a worker thread (so the store never blocks the event loop) and, once per
UTC day, deletes the days older than `[detect].prevalence_days`. Before a batch is added, a host
that shows a downgrade sign it did not show in the stored days of the last `news_days` is news:
one `prevalence.new_downgrade` warning and ``stsguard_prevalence_news_total{sign}``, once per UTC
day, host and sign (per relay). A store that fails keeps the counts
for the next try, at most `MAX_KEYS` (day, host, address) keys of them: past that, new keys are
dropped and counted. Nothing here can change a delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from detect.errors import PrevalenceStoreError
from detect.prevalence import (
    Batch,
    Measure,
    PrevalenceKey,
    PrevalenceStore,
    SessionSeen,
    count_session,
    first_day,
    merge_batch,
    new_downgrades,
    utc_day,
)
from relay.metrics import Metrics

log = structlog.get_logger(__name__)

MAX_KEYS = 20_000


class PrevalenceRecorder:
    """Buffers prevalence counts and adds them to a `PrevalenceStore` in batches."""

    def __init__(
        self,
        store: PrevalenceStore,
        *,
        clock: Callable[[], float],
        flush_interval: float = 5.0,
        keep_days: int = 90,
        news_days: int = 30,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.news_days = news_days
        self.metrics = metrics
        self._told: set[tuple[str, str, str]] = set()
        self.clock = clock
        self.flush_interval = flush_interval
        self.keep_days = keep_days
        self.dropped = 0
        self._batch: Batch = {}
        self._pruned_on = ""

    @property
    def buffered(self) -> int:
        return len(self._batch)

    def record(self, seen: SessionSeen) -> None:
        """Count one session; never does I/O."""
        if len(self._batch) >= MAX_KEYS:
            key = PrevalenceKey(utc_day(seen.when), seen.host, seen.address)
            if key not in self._batch:
                self.dropped += 1
                return
        count_session(self._batch, seen)

    def _keep(self, batch: Batch) -> None:
        merge_batch(batch, self._batch)  # what came meanwhile on top of what failed
        self._batch = batch

    def _add(self, batch: Batch) -> None:
        """Tell what is news in `batch`, then add it (blocking: a worker thread)."""
        try:
            self._tell_news(batch)
        except PrevalenceStoreError as exc:
            log.warning("prevalence.news_failed", error=str(exc))
        self.store.add(batch)

    def _tell_news(self, batch: Batch) -> None:
        hosts = {
            key.host
            for key, counts in batch.items()
            if key.host and counts[(Measure.DOWNGRADED, "")]
        }
        if not hosts or self.news_days <= 0:
            return
        today = utc_day(self.clock())
        since = first_day(today, self.news_days)
        earlier = [row for host in sorted(hosts) for row in self.store.rows(since, host)]
        self._told = {told for told in self._told if told[0] == today}  # bounded: one day
        for host, signs in sorted(new_downgrades(batch, earlier).items()):
            for sign in sorted(signs):
                if (today, host, sign) in self._told:
                    continue
                self._told.add((today, host, sign))
                log.warning(
                    "prevalence.new_downgrade", mx_host=host, sign=sign, days=self.news_days
                )
                if self.metrics is not None:
                    self.metrics.prevalence_news.labels(sign=sign).inc()

    def flush(self) -> None:
        """Add the buffered counts in one transaction; on failure they stay buffered."""
        batch, self._batch = self._batch, {}
        try:
            self._add(batch)
        except PrevalenceStoreError:
            self._keep(batch)
            raise

    def _prune(self) -> None:
        today = utc_day(self.clock())
        if self.keep_days <= 0 or today == self._pruned_on:
            return
        gone = self.store.prune(first_day(today, self.keep_days))
        self._pruned_on = today
        if gone:
            log.info("prevalence.pruned", rows=gone, kept_days=self.keep_days)

    async def _flush_in_thread(self) -> None:
        batch, self._batch = self._batch, {}
        try:
            await asyncio.to_thread(self._add, batch)
        except PrevalenceStoreError as exc:
            log.warning("prevalence.flush_failed", error=str(exc), buffered=len(batch))
            self._keep(batch)
        try:
            await asyncio.to_thread(self._prune)
        except PrevalenceStoreError as exc:
            log.warning("prevalence.prune_failed", error=str(exc))
        if self.dropped:
            log.warning("prevalence.dropped", sessions=self.dropped, max_keys=MAX_KEYS)
            self.dropped = 0

    async def run(self) -> None:
        """Flush every `flush_interval` seconds until cancelled; flush once more on the way out."""
        try:
            while True:
                await asyncio.sleep(self.flush_interval)
                await self._flush_in_thread()
        finally:
            try:
                self.flush()
            except PrevalenceStoreError as exc:
                log.error("prevalence.final_flush_failed", error=str(exc), lost=self.buffered)
