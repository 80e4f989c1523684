"""Retry schedule and queue lifetime (pure; `now` comes from the caller)."""

from __future__ import annotations


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
