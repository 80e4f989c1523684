"""The prevalence store, in memory, SQLite and PostgreSQL: batches add up (a fleet's relays into
the same rows), read by window and host, pruned by day."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from detect.prevalence import (
    Batch,
    Measure,
    PrevalenceStore,
    SessionSeen,
    count_session,
    rows_of,
)
from tests.relay.state.stores import KINDS, prevalence_store

NOW = 1_800_000_000.0  # 2027-01-15
DAY = 86400.0


@pytest.fixture(params=[k for k in KINDS if k != "postgresql-front"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> PrevalenceStore:
    return prevalence_store(request.param, request, tmp_path)


def batch_of(*sessions: SessionSeen) -> Batch:
    batch: Batch = {}
    for seen in sessions:
        count_session(batch, seen)
    return batch


def garbled(when: float = NOW, host: str = "mx.bad.example") -> SessionSeen:
    return SessionSeen(host, "203.0.113.9", when, False, garbled_token="XXXXXXXA")


def test_batches_add_up(store: PrevalenceStore) -> None:
    clean = SessionSeen("mx.good.example", "198.51.100.1", NOW, True)
    store.add(batch_of(garbled(), clean))
    store.add(batch_of(garbled(), garbled(NOW - 3 * DAY)))
    store.add({})
    rows = store.rows("2027-01-15")
    counts = {(r.host, r.measure, r.detail): r.count for r in rows}
    assert counts[("mx.bad.example", Measure.SESSIONS, "")] == 2
    assert counts[("mx.bad.example", Measure.GARBLED, "XXXXXXXA")] == 2
    assert counts[("mx.good.example", Measure.STARTTLS_OFFERED, "")] == 1
    assert {r.day for r in store.rows("2027-01-01")} == {"2027-01-12", "2027-01-15"}
    assert {r.host for r in store.rows("2027-01-01", "MX.Good.Example.")} == {"mx.good.example"}
    assert store.prune("2027-01-13") == len(rows_of(batch_of(garbled(NOW - 3 * DAY))))
    assert {r.day for r in store.rows("2027-01-01")} == {"2027-01-15"}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_relays_writing_at_once_lose_nothing(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    stores = [prevalence_store(kind, request, tmp_path) for _ in range(3)]

    def write(store: PrevalenceStore) -> None:
        for _ in range(20):
            store.add(batch_of(garbled()))

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = {(r.measure, r.detail): r.count for r in stores[0].rows("2027-01-15")}
    assert counts[(Measure.SESSIONS, "")] == 60
    assert counts[(Measure.DOWNGRADED, "")] == 60


def test_per_domain_rows(store: PrevalenceStore) -> None:
    mine = SessionSeen(
        "mx.bad.example", "203.0.113.9", NOW, False, garbled_token="X", domain="a.example"
    )
    store.add(batch_of(mine, mine))
    store.add(
        batch_of(SessionSeen("mx.b.example", "192.0.2.1", NOW - 9 * DAY, True, domain="b.example"))
    )
    per_domain = {
        (r.domain, r.measure): r.count for r in store.rows("2027-01-01", domain="a.example")
    }
    assert per_domain[("a.example", Measure.SESSIONS)] == 2
    assert per_domain[("a.example", Measure.GARBLED)] == 2
    assert {r.domain for r in store.rows("2027-01-10")} == {"", "a.example"}
    assert {r.domain for r in store.rows("2027-01-01")} == {"", "a.example", "b.example"}
    assert {r.host for r in store.rows("2027-01-01", "mx.bad.example")} == {"mx.bad.example"}
    store.prune("2027-01-10")
    assert {r.domain for r in store.rows("2000-01-01")} == {"", "a.example"}
