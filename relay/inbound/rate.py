"""A token bucket per client address: how often one client may POST reports (pure, `now` in)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RateLimit:
    """`per_minute` requests a minute per client, `burst` at once; at most `max_clients` tracked
    (past that, the buckets that are full again are forgotten first, then all)."""

    per_minute: float = 20.0
    burst: float = 20.0
    max_clients: int = 10_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # (tokens, at)

    def allow(self, client: str, now: float) -> bool:
        tokens, at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_minute / 60.0)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_clients:
            self._forget_full(now)
        return allowed

    def retry_after(self, client: str) -> int:
        """Seconds until the client may try again (for a 429's Retry-After)."""
        tokens, _ = self._buckets.get(client, (self.burst, 0.0))
        return max(1, int((1.0 - tokens) * 60.0 / self.per_minute) + 1)

    def _forget_full(self, now: float) -> None:
        full = [
            c
            for c, (t, at) in self._buckets.items()
            if t + (now - at) * self.per_minute / 60.0 >= self.burst
        ]
        for client in full:
            del self._buckets[client]
        if len(self._buckets) > self.max_clients:
            self._buckets.clear()
