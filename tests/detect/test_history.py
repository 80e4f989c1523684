"""Remembered TLS: the stores (SQLite survives reopen) and the downgrade judge, `now` injected."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detect.errors import HistoryStoreError
from detect.history import (
    DAY,
    HostHistory,
    MemoryTlsHistoryStore,
    SqliteTlsHistoryStore,
    TlsHistoryStore,
    judge_downgrade,
    updated,
)
from detect.model import STARTTLS_NOT_SUPPORTED, VALIDATION_FAILURE, FindingKind

NOW = 1_800_000_000.0


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TlsHistoryStore:
    if request.param == "memory":
        return MemoryTlsHistoryStore()
    return SqliteTlsHistoryStore(tmp_path / "state" / "state.sqlite3")


def test_store_records_and_keeps_the_last_good_times(store: TlsHistoryStore) -> None:
    assert store.get("mx.example.org") is None
    store.record("MX.Example.Org.", offered_starttls=True, valid_cert=True, now=NOW)
    store.record("mx.example.org", offered_starttls=False, valid_cert=False, now=NOW + 60)
    assert store.get("mx.EXAMPLE.org.") == HostHistory(
        "mx.example.org", last_starttls_at=NOW, last_valid_cert_at=NOW, last_seen_at=NOW + 60
    )
    store.record("mx.example.org", offered_starttls=True, valid_cert=False, now=NOW + 120)
    history = store.get("mx.example.org")
    assert history is not None
    assert (history.last_starttls_at, history.last_valid_cert_at) == (NOW + 120, NOW)
    store.record("b.example.org", offered_starttls=False, valid_cert=False, now=NOW)
    assert [h.host for h in store.all()] == ["b.example.org", "mx.example.org"]
    assert store.get("b.example.org") == HostHistory("b.example.org", None, None, NOW)
    assert store.forget("MX.example.org.")
    assert not store.forget("mx.example.org")
    assert [h.host for h in store.all()] == ["b.example.org"]


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteTlsHistoryStore(path)
    first.record("mx.example.org", offered_starttls=True, valid_cert=True, now=NOW)
    first.close()
    again = SqliteTlsHistoryStore(path)
    assert again.get("mx.example.org") == HostHistory("mx.example.org", NOW, NOW, NOW)
    assert again.path == path
    again.close()


def test_sqlite_shares_the_state_file(tmp_path: Path) -> None:
    """Its own table in the shared state file: other tables are left alone."""
    import sqlite3

    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE other (x)")
        db.execute("INSERT INTO other VALUES (1)")
    store = SqliteTlsHistoryStore(path)
    store.record("mx.example.org", offered_starttls=True, valid_cert=False, now=NOW)
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT x FROM other").fetchall() == [(1,)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_sqlite_errors_are_translated(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite3").mkdir()
    with pytest.raises(HistoryStoreError, match=r"state\.sqlite3"):
        SqliteTlsHistoryStore(tmp_path / "state.sqlite3")
    store = SqliteTlsHistoryStore(tmp_path / "ok.sqlite3")
    store.close()
    with pytest.raises(HistoryStoreError):
        store.all()


# (history, offered_starttls, cert_valid, history_days) -> (finding result type or None)
SEEN_TLS = HostHistory("mx.example.org", NOW - 2 * DAY, NOW - 2 * DAY, NOW - 2 * DAY)
OLD_TLS = HostHistory("mx.example.org", NOW - 40 * DAY, NOW - 40 * DAY, NOW - 40 * DAY)
STARTTLS_ONLY = HostHistory("mx.example.org", NOW - DAY, None, NOW - DAY)
NEVER = HostHistory("mx.example.org", None, None, NOW - DAY)
EDGE = HostHistory("mx.example.org", NOW - 30 * DAY, NOW - 30 * DAY, NOW - DAY)
PAST_EDGE = HostHistory("mx.example.org", NOW - 30 * DAY - 1, NOW - 30 * DAY - 1, NOW - DAY)

DOWNGRADE_TABLE = [
    ("no history", None, False, None, 30, None),
    ("never offered", NEVER, False, None, 30, None),
    ("starttls gone", SEEN_TLS, False, None, 30, STARTTLS_NOT_SUPPORTED),
    ("starttls gone, long ago", OLD_TLS, False, None, 30, None),
    ("starttls gone, window 60 days", OLD_TLS, False, None, 60, STARTTLS_NOT_SUPPORTED),
    ("starttls gone, exactly history_days ago", EDGE, False, None, 30, STARTTLS_NOT_SUPPORTED),
    ("starttls gone, a second too long ago", PAST_EDGE, False, None, 30, None),
    ("cert fails, exactly history_days ago", EDGE, True, False, 30, VALIDATION_FAILURE),
    ("cert fails, a second too long ago", PAST_EDGE, True, False, 30, None),
    ("history off", SEEN_TLS, False, None, 0, None),
    ("history off, cert fails", SEEN_TLS, True, False, 0, None),
    ("cert now fails", SEEN_TLS, True, False, 30, VALIDATION_FAILURE),
    ("cert fails, never valid", STARTTLS_ONLY, True, False, 30, None),
    ("all well", SEEN_TLS, True, True, 30, None),
    ("no history, cert fails", None, True, False, 30, None),
    (
        "starttls gone and cert was valid: starttls first",
        SEEN_TLS,
        False,
        False,
        30,
        STARTTLS_NOT_SUPPORTED,
    ),
    ("no tls this time but offered", SEEN_TLS, True, None, 30, None),
    ("starttls gone, never valid cert", STARTTLS_ONLY, False, None, 30, STARTTLS_NOT_SUPPORTED),
]


@pytest.mark.parametrize(
    ("history", "offered", "cert_valid", "days", "result_type"),
    [row[1:] for row in DOWNGRADE_TABLE],
    ids=[row[0] for row in DOWNGRADE_TABLE],
)
def test_judge_downgrade(
    history: HostHistory | None,
    offered: bool,
    cert_valid: bool | None,
    days: int,
    result_type: str | None,
) -> None:
    finding = judge_downgrade(
        history, offered_starttls=offered, cert_valid=cert_valid, now=NOW, history_days=days
    )
    if result_type is None:
        assert finding is None
        return
    assert finding is not None
    assert finding.kind is FindingKind.DOWNGRADE
    assert finding.result_type == result_type
    assert "mx.example.org" in finding.evidence
    assert " at 20" in finding.evidence  # when it did better


def test_downgrade_evidence_says_when() -> None:
    finding = judge_downgrade(
        SEEN_TLS, offered_starttls=False, cert_valid=None, now=NOW, history_days=30
    )
    assert finding is not None
    assert finding.evidence == (
        "mx.example.org offered STARTTLS at 2027-01-13T08:00:00Z; now it does not"
    )
    assert finding.expected == "STARTTLS, as offered before"


@settings(max_examples=200)
@given(
    events=st.lists(st.tuples(st.booleans(), st.booleans(), st.floats(0, 1e10)), max_size=8),
)
def test_property_memory_store_follows_updated(events: list[tuple[bool, bool, float]]) -> None:
    store = MemoryTlsHistoryStore()
    expected: HostHistory | None = None
    for offered, valid, now in events:
        store.record("MX.test.", offered_starttls=offered, valid_cert=valid, now=now)
        expected = updated(expected, "mx.test", offered_starttls=offered, valid_cert=valid, now=now)
    assert store.get("mx.test") == expected
