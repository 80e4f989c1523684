"""CountingSink batching and flushing; SQLite and memory stores agree and SQLite survives reopen."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import pytest

from relay.state.database import SqliteDatabase
from relay.state.report_store import SqlReportStore
from tests.tlsrpt_emit.sessions import DAY, NOON, day_results, sts
from tlsrpt_emit.model import FailureKey, PolicyType, ResultType
from tlsrpt_emit.sink import CountingSink
from tlsrpt_emit.store import MemoryReportStore, ReportStore, SentReport


def stores(tmp_path: Path) -> list[ReportStore]:
    return [MemoryReportStore(), SqlReportStore(SqliteDatabase(tmp_path / "state.sqlite3"))]


def test_sink_buffers_until_flush(tmp_path: Path) -> None:
    for store in stores(tmp_path):
        sink = CountingSink(store, clock=lambda: 1000.0)
        for result in day_results():
            sink.record(result)
        assert sink.buffered == 8
        assert store.counts(DAY) == []  # record() never writes
        sink.flush()
        assert sink.buffered == 0
        assert sink.last_flush == 1000.0
        rows = store.counts(DAY)
        assert [(r.key.policy_domain, r.key.policy_type) for r in rows] == [
            ("example.org", PolicyType.NO_POLICY_FOUND),
            ("example.org", PolicyType.STS),
            ("plain.example", PolicyType.NO_POLICY_FOUND),
        ]
        sts_row = rows[1]
        assert sts_row.successes == 3
        assert sts_row.failures == (
            (
                FailureKey(
                    ResultType.CERTIFICATE_NOT_TRUSTED,
                    sending_mta_ip="127.0.0.5",
                    receiving_mx_hostname="mx1.mail.example.org",
                    receiving_ip="127.0.0.21",
                    failure_reason_code="X509_V_ERR_UNTRUSTED",
                ),
                2,
            ),
        )
        assert store.domains(DAY) == ["example.org", "plain.example"]


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


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.sqlite3"
    store = SqlReportStore(SqliteDatabase(path))
    sink = CountingSink(store, clock=lambda: 0.0)
    for result in day_results():
        sink.record(result)
    sink.flush()
    sent = SentReport(
        day=DAY,
        domain="example.org",
        report_id="r1",
        destinations_done=("https://r.example.org/",),
        attempts=2,
        first_attempt=NOON,
        next_retry=None,
        status="delivered",
    )
    store.put_sent(sent)
    store.put_sent(SentReport(day=DAY, domain="plain.example", report_id="r2", next_retry=5.0))
    before = store.counts(DAY)
    store.close()
    again = SqlReportStore(SqliteDatabase(path))
    assert again.counts(DAY) == before
    assert again.counts(DAY, "plain.example") == [
        r for r in before if r.key.policy_domain == "plain.example"
    ]
    assert again.get_sent(DAY, "example.org") == sent
    assert [s.report_id for s in again.pending_sent()] == ["r2"]


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
