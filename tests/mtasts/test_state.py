"""STS-05, STS-06, STS-07: the pure refresh/fallback decision, as a table."""

from __future__ import annotations

import pytest

from mtasts.model import Mode, Policy, StsRecord
from mtasts.state import (
    FETCH_BACKOFF,
    CacheEntry,
    FetchFailure,
    RefreshAction,
    TxtLookup,
    TxtStatus,
    decide,
    fallback,
    in_backoff,
)

DAY = 86_400
T0 = 1_000_000.0
POLICY = Policy(Mode.ENFORCE, 7 * DAY, ("mx.example.org",))
ENTRY = CacheEntry.fetched("example.org", POLICY, "1", T0)  # expires T0 + 7 days
SHORT = CacheEntry.fetched("example.org", Policy(Mode.TESTING, 600, ("m.x",)), "1", T0)

FOUND_1 = TxtLookup.found(StsRecord("1"))
FOUND_2 = TxtLookup.found(StsRecord("2"))
ABSENT = TxtLookup(TxtStatus.ABSENT)
INVALID = TxtLookup(TxtStatus.INVALID, error="bad")
FAILED = TxtLookup(TxtStatus.FAILED, error="SERVFAIL")


def failed(record_id: str, at: float) -> FetchFailure:
    return FetchFailure(record_id, at, "sts-policy-fetch-error", "HTTP status 500")


@pytest.mark.parametrize(
    ("name", "entry", "txt", "now", "failure", "expected"),
    [
        ("cold, record found", None, FOUND_1, T0, None, RefreshAction.FETCH),
        ("cold, no record", None, ABSENT, T0, None, RefreshAction.NO_POLICY),
        ("cold, invalid record", None, INVALID, T0, None, RefreshAction.NO_POLICY),
        ("cold, look-up failed", None, FAILED, T0, None, RefreshAction.NO_POLICY),
        ("same id, fresh", ENTRY, FOUND_1, T0 + 60, None, RefreshAction.USE_CACHE),
        ("same id, 23 h", ENTRY, FOUND_1, T0 + DAY - 3600, None, RefreshAction.USE_CACHE),
        ("sts07 same id, a day old", ENTRY, FOUND_1, T0 + DAY, None, RefreshAction.FETCH),
        ("id changed", ENTRY, FOUND_2, T0 + 60, None, RefreshAction.FETCH),
        ("sts06 no record, cached", ENTRY, ABSENT, T0 + 60, None, RefreshAction.USE_CACHE),
        ("sts06 invalid record, cached", ENTRY, INVALID, T0 + 60, None, RefreshAction.USE_CACHE),
        ("sts06 look-up failed, cached", ENTRY, FAILED, T0 + 2 * DAY, None,
         RefreshAction.USE_CACHE),
        ("no record, cache expired", ENTRY, ABSENT, T0 + 7 * DAY, None, RefreshAction.NO_POLICY),
        ("found, cache expired", ENTRY, FOUND_1, T0 + 7 * DAY, None, RefreshAction.FETCH),
        ("sts07 near expiry", SHORT, FOUND_1, T0 + 300, None, RefreshAction.FETCH),
        ("short policy, early", SHORT, FOUND_1, T0 + 299, None, RefreshAction.USE_CACHE),
        ("sts05 failed 4 min ago", None, FOUND_1, T0 + 240, failed("1", T0), RefreshAction.BACKOFF),
        ("sts05 failed 5 min ago", None, FOUND_1, T0 + 300, failed("1", T0), RefreshAction.FETCH),
        ("sts05 other id failed", ENTRY, FOUND_2, T0 + 60, failed("3", T0), RefreshAction.FETCH),
        ("sts05 refresh backs off", ENTRY, FOUND_1, T0 + DAY, failed("1", T0 + DAY - 1),
         RefreshAction.BACKOFF),
        ("sts05 cached and fresh ignores failure", ENTRY, FOUND_1, T0 + 60, failed("1", T0),
         RefreshAction.USE_CACHE),
    ],
)  # fmt: skip
def test_sts05_06_07_decision_table(
    name: str,
    entry: CacheEntry | None,
    txt: TxtLookup,
    now: float,
    failure: FetchFailure | None,
    expected: RefreshAction,
) -> None:
    assert decide(entry, txt, now, last_failure=failure, refresh_interval=DAY) is expected, name


def test_sts07_refresh_interval_is_configurable() -> None:
    assert decide(ENTRY, FOUND_1, T0 + 3600, refresh_interval=3600) is RefreshAction.FETCH
    assert decide(ENTRY, FOUND_1, T0 + 3599, refresh_interval=3600) is RefreshAction.USE_CACHE


def test_sts05_backoff_is_five_minutes_per_id() -> None:
    f = failed("1", T0)
    assert FETCH_BACKOFF == 300
    assert in_backoff(f, "1", T0)
    assert in_backoff(f, "1", T0 + 299.9)
    assert not in_backoff(f, "1", T0 + 300)
    assert not in_backoff(f, "2", T0 + 1)
    assert not in_backoff(None, "1", T0)


def test_sts06_fallback_only_while_unexpired() -> None:
    assert fallback(ENTRY, T0 + 7 * DAY - 1) is ENTRY
    assert fallback(ENTRY, T0 + 7 * DAY) is None
    assert fallback(None, T0) is None
