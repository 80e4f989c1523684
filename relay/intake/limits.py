"""Intake limits: how many sessions, from whom, and how many failed AUTHs an address may have.

The bookkeeping is pure (the caller passes `now`); `relay.intake.session` asks before it greets a
client and says when a session ended. README "Limits and abuse" lists every limit and its reply.

- Connections are counted in total (``max_connections``) and per client address
  (``max_connections_per_ip``; IPv6 per /64, the usual size of one customer's network). Clients
  outside ``accept_networks`` may hold at most half of ``max_connections``, so hosts that may relay
  always find a free slot however many idle connections others open.
- `connection_budget` lowers ``max_connections`` when the descriptor limit cannot hold that many
  sessions beside the rest of the relay, so a full intake never makes the spool or a delivery
  fail with ``EMFILE``.
"""

from __future__ import annotations

import ipaddress
import resource
from collections import OrderedDict, deque
from dataclasses import dataclass, field

# Descriptors kept for everything that is not an inbound session: the listening socket, the
# SQLite state, spool files being written or read, DNS and policy fetches, logs. A process that
# also delivers keeps two more per delivery worker (the MX socket and one spare).
BASE_RESERVE = 64
MIN_CONNECTIONS = 8

# Failed AUTHs are remembered per client address this long.
AUTH_WINDOW = 900.0
# At most this many client addresses are remembered (the oldest are forgotten first).
AUTH_CLIENTS_KEPT = 10_000


def client_key(address: str) -> str:
    """What the per-address limits count: the IPv4 address, or the IPv6 /64 (IPv4-mapped IPv6
    counts as IPv4). Anything that does not parse counts as itself."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class ConnectionLimits:
    """Open intake sessions, counted so that `admit` can refuse one more."""

    max_total: int
    max_per_ip: int
    max_outside: int
    total: int = 0
    outside: int = 0
    per_ip: dict[str, int] = field(default_factory=dict)

    @classmethod
    def for_relay(cls, max_total: int, max_per_ip: int, *, has_networks: bool) -> ConnectionLimits:
        """Outsiders get half the slots when there are networks to keep slots for."""
        outside = max(1, max_total // 2) if has_networks else max_total
        return cls(max_total, max_per_ip, outside)

    def admit(self, key: str, *, inside: bool) -> str | None:
        """Count a new session and return None, or return why it is refused (not counted)."""
        if self.total >= self.max_total:
            return "max_connections"
        if not inside and self.outside >= self.max_outside:
            return "max_connections_outside"
        if self.per_ip.get(key, 0) >= self.max_per_ip:
            return "max_connections_per_ip"
        self.total += 1
        if not inside:
            self.outside += 1
        self.per_ip[key] = self.per_ip.get(key, 0) + 1
        return None

    def release(self, key: str, *, inside: bool) -> None:
        """A session counted by `admit` ended."""
        self.total -= 1
        if not inside:
            self.outside -= 1
        left = self.per_ip.get(key, 0) - 1
        if left > 0:
            self.per_ip[key] = left
        else:
            self.per_ip.pop(key, None)


class AuthFailures:
    """Failed AUTH attempts per client address within `AUTH_WINDOW` seconds."""

    def __init__(self, limit: int, *, window: float = AUTH_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._seen.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._seen[key]
        return times

    def count(self, key: str, now: float) -> int:
        return len(self._recent(key, now))

    def blocked(self, key: str, now: float) -> bool:
        """True when this address used up its failures for now."""
        return self.count(key, now) >= self.limit

    def record(self, key: str, now: float) -> int:
        """Note one failure; returns the failures of this address within the window."""
        times = self._recent(key, now)
        if key not in self._seen:
            self._seen[key] = times
        self._seen.move_to_end(key)
        times.append(now)
        while len(times) > self.limit:
            times.popleft()
        while len(self._seen) > AUTH_CLIENTS_KEPT:
            self._seen.popitem(last=False)
        return len(times)


class RefusalLog:
    """Says when to log a refused connection: the first from an address, then at most one per
    `interval` seconds with how many were left unlogged, so a flood does not flood the log."""

    def __init__(self, interval: float = 10.0, *, kept: int = AUTH_CLIENTS_KEPT) -> None:
        self.interval = interval
        self.kept = kept
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def due(self, key: str, now: float) -> int | None:
        """None: do not log this one. A number: log it, with that many unlogged before it."""
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return None
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self.kept:
            self._last.popitem(last=False)
        return 0 if last is None else last[1]


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (a systemd service starts with a soft
    1,024); returns (soft, hard) afterwards. Never fails: a limit that cannot move stays."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def connection_budget(max_connections: int, soft_limit: int, reserve: int) -> int:
    """`max_connections`, lowered to what the descriptor limit leaves after `reserve`."""
    if soft_limit == resource.RLIM_INFINITY:
        return max_connections
    return min(max_connections, max(MIN_CONNECTIONS, soft_limit - reserve))
