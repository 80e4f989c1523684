"""A PostgreSQL outage never stops mail: answers from memory, writes kept and written when the
database is back, the outage logged once and its end once (a private cluster, stopped, started)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from lab.postgres import PgCluster
from mtasts.model import Mode, Policy
from mtasts.state import CacheEntry
from relay.state.stores import open_state
from relay.state_url import parse_state_url
from tests.tlsrpt_emit.sessions import DAY, sts
from tlsrpt_emit.errors import ReportStoreError
from tlsrpt_emit.sink import CountingSink

POLICY = Policy(Mode.ENFORCE, 86400, ("mx.example.org",), "version: STSv1\n")
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A cluster of this test's own: it is stopped while other tests may use the shared one."""
    found, why = PgCluster.find()
    if found is None:
        pytest.skip(f"no PostgreSQL: {why}")
    found.init()
    found.start()
    yield found
    found.remove()


def wait_for(check: object, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_outage_answers_from_memory_buffers_writes_and_catches_up(
    cluster: PgCluster, tmp_path: Path
) -> None:
    clock = Clock()
    url = parse_state_url(cluster.new_database(), Path())
    state = open_state(url, clock=clock, retry_interval=0.2)
    reader = open_state(url, front=False)  # another relay's direct view
    try:
        entry = CacheEntry.fetched("example.org", POLICY, "1", NOW)
        state.policies.put(entry)
        state.history.record("mx.example.org", offered_starttls=True, valid_cert=True, now=NOW)
        sink = CountingSink(state.reports, clock=clock)
        sink.record(sts())
        sink.flush()
        assert state.availability is not None
        assert state.availability.up

        with capture_logs() as logs:
            cluster.stop()
            clock.now += 3600  # far past every memory refresh: the database would be asked
            assert state.policies.get("example.org") == entry  # from memory
            assert state.policies.get("new.example") is None  # not held: the caller fetches
            history = state.history.get("mx.example.org")
            assert history is not None
            assert history.last_starttls_at == NOW
            state.history.record(
                "mx2.example.org", offered_starttls=True, valid_cert=False, now=clock.now
            )
            state.policies.put(CacheEntry.fetched("new.example", POLICY, "7", clock.now))
            for _ in range(3):
                sink.record(sts())
            sink.flush()  # no error: buffered by the store
            assert sink.buffered == 0
            with pytest.raises(ReportStoreError, match="unavailable"):
                state.reports.counts(DAY)  # no report from a partial view
            with pytest.raises(ReportStoreError):
                state.reports.claim(DAY, "example.org", now=clock.now, lease=60)
            cluster.start()
            assert state.availability.settled.wait(60)
        events = [e["event"] for e in logs if e["event"].startswith("state.")]
        assert events.count("state.unavailable") == 1
        assert events.count("state.available") == 1

        (row,) = reader.reports.counts(DAY)
        assert row.successes == 4  # 1 before + 3 buffered through the outage
        assert reader.policies.get("new.example") is not None
        remembered = reader.history.get("mx2.example.org")
        assert remembered is not None
        assert remembered.last_starttls_at == clock.now
    finally:
        reader.close()
        state.close()


def test_relay_starts_while_the_database_is_down(cluster: PgCluster) -> None:
    url = parse_state_url(cluster.new_database(), Path())
    cluster.stop()
    with capture_logs() as logs:
        state = open_state(url, retry_interval=0.2)
    try:
        assert state.availability is not None
        assert not state.availability.up
        assert state.policies.get("example.org") is None
        state.history.record("mx.example.org", offered_starttls=True, valid_cert=True, now=NOW)
        assert [e["event"] for e in logs].count("state.unavailable") == 1
        cluster.start()
        assert state.availability.settled.wait(60)
        # The schema was made when the database came back, and the record followed it.
        direct = open_state(url, front=False)
        try:
            assert direct.history.get("mx.example.org") is not None
        finally:
            direct.close()
    finally:
        state.close()


def test_no_thread_left_behind(cluster: PgCluster) -> None:
    before = threading.active_count()
    state = open_state(parse_state_url(cluster.new_database(), Path()))
    state.close()
    wait_for(lambda: threading.active_count() <= before, within=10)
