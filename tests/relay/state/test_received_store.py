"""The store of received reports, in memory, SQLite and PostgreSQL: one copy per report-id
(also when relays of a fleet take the same report), read by date, alerts claimed once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.relay.state.stores import open_kind
from tlsrpt_emit.inbound import MemoryReceivedReportStore, ReceivedReportStore, accept_report

PEERS = Path(__file__).parent.parent.parent / "tlsrpt_emit" / "peer_reports"


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ReceivedReportStore:
    state = open_kind(request.param, request, tmp_path)
    if state is None:
        return MemoryReceivedReportStore()
    assert state.received is not None
    return state.received


def test_one_copy_per_report_id_and_alerts_once(store: ReceivedReportStore) -> None:
    data = (PEERS / "shape-microsoft-tlsa.json").read_bytes()
    received = accept_report(data, ["example.com"], via="https", now=1.0)
    assert store.add(received)
    assert not store.add(accept_report(data, ["example.com"], via="maildir", now=2.0))
    end = received.report.end.timestamp()
    assert store.documents(end) == [data]
    assert store.documents(end + 1) == []
    assert store.claim_alert("2026-12-01", "example.com", "failure-share")
    assert not store.claim_alert("2026-12-01", "example.com", "failure-share")
    assert store.claim_alert("2026-12-02", "example.com", "failure-share")
