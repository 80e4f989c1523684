"""MX order, retry back-off and queue lifetime (pure)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery.mx import order_by_preference
from relay.queue.retry import expired, next_retry


def test_order_by_preference_lowest_first() -> None:
    records = [(20, "b"), (10, "a"), (30, "c")]
    assert order_by_preference(records, random.Random(1)) == ["a", "b", "c"]


def test_equal_preferences_are_shuffled_with_the_injected_rng() -> None:
    records = [(10, f"mx{i}") for i in range(6)] + [(5, "first")]
    orders = {tuple(order_by_preference(records, random.Random(seed))) for seed in range(20)}
    assert len(orders) > 1  # the rng is used
    assert all(order[0] == "first" for order in orders)
    # the same seed gives the same order
    again = order_by_preference(records, random.Random(3))
    assert again == order_by_preference(records, random.Random(3))


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 65535), st.text(max_size=5)), max_size=20), st.integers())
def test_order_keeps_every_item_in_preference_order(
    records: list[tuple[int, str]], seed: int
) -> None:
    ordered = order_by_preference(records, random.Random(seed))
    assert sorted(ordered) == sorted(item for _, item in records)
    prefs = {item: pref for pref, item in records}
    if len(prefs) == len(records):
        assert [prefs[i] for i in ordered] == sorted(prefs[i] for i in ordered)


def test_next_retry_backs_off_exponentially_up_to_the_maximum() -> None:
    delays = [next_retry(n, initial=300, maximum=3600) for n in range(1, 7)]
    assert delays == [300, 600, 1200, 2400, 3600, 3600]
    assert next_retry(0, initial=300, maximum=3600) == 0
    assert next_retry(10_000, initial=300, maximum=3600) == 3600


@settings(max_examples=200)
@given(st.integers(1, 10_000), st.integers(1, 10**6), st.integers(1, 10**7))
def test_next_retry_is_monotonic_and_bounded(attempts: int, initial: int, maximum: int) -> None:
    delay = next_retry(attempts, initial=initial, maximum=maximum)
    assert 0 < delay <= maximum
    assert delay <= next_retry(attempts + 1, initial=initial, maximum=maximum)


def test_queue_lifetime_expiry() -> None:
    assert not expired(1000.0, 1000.0 + 86399, lifetime=86400)
    assert expired(1000.0, 1000.0 + 86400, lifetime=86400)
