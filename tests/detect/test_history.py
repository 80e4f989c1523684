"""Remembered TLS: the downgrade judge and the pure updates, `now` injected (the stores:
tests/relay/state)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detect.history import (
    DAY,
    HostHistory,
    MemoryTlsHistoryStore,
    judge_downgrade,
    updated,
)
from detect.model import STARTTLS_NOT_SUPPORTED, VALIDATION_FAILURE, FindingKind

NOW = 1_800_000_000.0


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
