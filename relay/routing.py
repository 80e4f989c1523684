"""MX order, retry schedule and queue lifetime (pure; the rng and `now` come from the caller)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from itertools import groupby
from typing import TypeVar

_T = TypeVar("_T")


def order_by_preference(records: Iterable[tuple[int, _T]], rng: random.Random) -> list[_T]:
    """Items sorted by MX preference, lowest first; equal preferences in random order
    (RFC 5321 section 5.1)."""
    ordered: list[_T] = []
    for _pref, group in groupby(sorted(records, key=lambda r: r[0]), key=lambda r: r[0]):
        same = [item for _, item in group]
        rng.shuffle(same)
        ordered.extend(same)
    return ordered


def next_retry(attempts: int, *, initial: int, maximum: int) -> int:
    """Seconds to wait after `attempts` failed attempts: initial, 2x, 4x ... capped at `maximum`."""
    if attempts <= 0:
        return 0
    # Cap the exponent so a message retried for weeks does not build huge integers.
    delay: int = initial * 2 ** min(attempts - 1, 32)
    return max(0, min(maximum, delay))


def expired(queued_at: float, now: float, *, lifetime: int) -> bool:
    """True when a message queued at `queued_at` has outlived `delivery.queue_lifetime`."""
    return now - queued_at >= lifetime
