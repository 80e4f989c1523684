"""The relay's prevalence writer: counts kept in memory until the store takes them, never lost
to a failing store, bounded, and old days pruned once a day."""

from __future__ import annotations

import asyncio

import pytest

from detect.errors import PrevalenceStoreError
from detect.prevalence import Batch, Measure, MemoryPrevalenceStore, SessionSeen
from relay import prevalence
from relay.prevalence import PrevalenceRecorder

NOW = 1_800_000_000.0  # 2027-01-15
DAY = 86400.0


class FlakyStore(MemoryPrevalenceStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def add(self, batch: Batch) -> None:
        if self.down:
            raise PrevalenceStoreError("could not connect")
        super().add(batch)


def garbled(host: str = "mx.bad.example") -> SessionSeen:
    return SessionSeen(host, "203.0.113.9", NOW, False, garbled_token="XXXXXXXA")


def sessions(store: MemoryPrevalenceStore) -> int:
    return sum(r.count for r in store.rows("2000-01-01") if r.measure == Measure.SESSIONS)


def test_a_failing_store_keeps_the_counts_for_the_next_flush() -> None:
    store = FlakyStore()
    recorder = PrevalenceRecorder(store, clock=lambda: NOW)
    recorder.record(garbled())
    with pytest.raises(PrevalenceStoreError):
        recorder.flush()
    recorder.record(garbled())
    store.down = False
    recorder.flush()
    assert sessions(store) == 2
    recorder.flush()  # nothing twice
    assert sessions(store) == 2


def test_the_buffer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prevalence, "MAX_KEYS", 2)
    recorder = PrevalenceRecorder(FlakyStore(), clock=lambda: NOW)
    for host in ("a", "b", "c", "a"):
        recorder.record(garbled(host))
    assert recorder.buffered == 2
    assert recorder.dropped == 1


async def test_run_flushes_and_prunes_old_days() -> None:
    store = MemoryPrevalenceStore()
    old = SessionSeen("mx.old.example", "192.0.2.1", NOW - 100 * DAY, True)
    recorder = PrevalenceRecorder(store, clock=lambda: NOW, flush_interval=0.01, keep_days=90)
    recorder.record(old)
    recorder.record(garbled())
    task = asyncio.create_task(recorder.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if store.batch and all(k.day >= "2026-10-18" for k in store.batch):
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert {k.host for k in store.batch} == {"mx.bad.example"}


def test_a_host_newly_downgraded_is_told_once_a_day() -> None:
    from structlog.testing import capture_logs

    from relay.metrics import Metrics

    store = MemoryPrevalenceStore()
    metrics = Metrics()
    now = [NOW]
    recorder = PrevalenceRecorder(store, clock=lambda: now[0], news_days=30, metrics=metrics)
    clean = SessionSeen("mx.bad.example", "203.0.113.9", NOW - 5 * DAY, True)
    recorder.record(clean)
    with capture_logs() as logs:
        recorder.flush()  # clean: no news
        recorder.record(garbled())
        recorder.flush()  # garbled for the first time: news
        recorder.record(garbled())
        recorder.flush()  # the same sign again: stored, no news
        recorder.record(SessionSeen("mx.bad.example", "203.0.113.9", NOW, True, refused_code=454))
        recorder.flush()  # another sign: news
    told = [(e["mx_host"], e["sign"]) for e in logs if e["event"] == "prevalence.new_downgrade"]
    assert told == [("mx.bad.example", "garbled"), ("mx.bad.example", "refused")]
    assert metrics.value("stsguard_prevalence_news_total", {"sign": "garbled"}) == 1
    assert sessions(store) == 4
