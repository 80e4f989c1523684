"""CountingSink batching and flushing (the stores themselves: tests/relay/state)."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import pytest

from relay.state.database import SqliteDatabase
from relay.state.report_store import SqlReportStore
from tests.tlsrpt_emit.sessions import DAY, sts
from tlsrpt_emit.model import ResultType
from tlsrpt_emit.sink import CountingSink
from tlsrpt_emit.store import MemoryReportStore


def test_sink_batches_add_up(tmp_path: Path) -> None:
    store = SqlReportStore(SqliteDatabase(tmp_path / "s.sqlite3"))
    sink = CountingSink(store, clock=lambda: 0.0)
    sink.record(sts())
    sink.flush()
    sink.record(sts())
    sink.record(sts(ResultType.CERTIFICATE_EXPIRED))
    sink.flush()
    sink.flush()  # nothing buffered: no change
    (row,) = store.counts(DAY)
    assert row.successes == 2
    assert row.failure_total == 1


def test_results_go_to_their_utc_day(tmp_path: Path) -> None:
    store = MemoryReportStore()
    sink = CountingSink(store, clock=lambda: 0.0)
    midnight = datetime.datetime(2026, 11, 29, tzinfo=datetime.UTC).timestamp()
    sink.record(sts(when=midnight - 0.5))
    sink.record(sts(when=midnight))
    sink.flush()
    assert store.counts(DAY)[0].successes == 1
    assert store.counts(DAY + datetime.timedelta(days=1))[0].successes == 1


async def test_sink_run_flushes_periodically_and_on_cancel() -> None:
    store = MemoryReportStore()
    sink = CountingSink(store, clock=lambda: 0.0, flush_interval=0.01)
    task = asyncio.create_task(sink.run())
    sink.record(sts())
    for _ in range(100):
        await asyncio.sleep(0.01)
        if store.counts(DAY):
            break
    assert store.counts(DAY)[0].successes == 1
    sink.record(sts())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.counts(DAY)[0].successes == 2  # flushed on the way out
