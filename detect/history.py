"""Remembered TLS (trust on first use): when each MX host last offered STARTTLS and last showed a
valid certificate, and the pure judge that turns a worse session into a `downgrade` finding."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Protocol

from detect.model import STARTTLS_NOT_SUPPORTED, VALIDATION_FAILURE, Finding, FindingKind

DAY = 86400.0


def host_key(host: str) -> str:
    """Host names compare lower-case without a trailing dot."""
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class HostHistory:
    """What one MX host did, as Unix times (None: never seen doing it)."""

    host: str
    last_starttls_at: float | None = None
    last_valid_cert_at: float | None = None
    last_seen_at: float = 0.0


def updated(
    old: HostHistory | None, host: str, *, offered_starttls: bool, valid_cert: bool, now: float
) -> HostHistory:
    """The history after one more session (pure)."""
    current = old or HostHistory(host_key(host))
    return replace(
        current,
        last_starttls_at=now if offered_starttls else current.last_starttls_at,
        last_valid_cert_at=now if valid_cert else current.last_valid_cert_at,
        last_seen_at=now,
    )


def merged(a: HostHistory | None, b: HostHistory) -> HostHistory:
    """Two histories of one host as one: the later time of each fact (pure)."""
    if a is None:
        return b

    def later(x: float | None, y: float | None) -> float | None:
        return y if x is None or (y is not None and y > x) else x

    return HostHistory(
        a.host,
        later(a.last_starttls_at, b.last_starttls_at),
        later(a.last_valid_cert_at, b.last_valid_cert_at),
        max(a.last_seen_at, b.last_seen_at),
    )


def judge_downgrade(
    history: HostHistory | None,
    *,
    offered_starttls: bool,
    cert_valid: bool | None,
    now: float,
    history_days: int,
) -> Finding | None:
    """A `downgrade` finding when the host did better within `history_days` than it does now:
    it offered STARTTLS and now does not, or it showed a valid certificate and now one fails.
    `cert_valid` is None when no certificate was seen this time (no TLS)."""
    if history is None or history_days <= 0:
        return None
    since = now - history_days * DAY
    starttls_at, cert_at = history.last_starttls_at, history.last_valid_cert_at
    if not offered_starttls and starttls_at is not None and starttls_at >= since:
        return Finding(
            FindingKind.DOWNGRADE,
            evidence=f"{history.host} offered STARTTLS at {_iso(starttls_at)}; now it does not",
            result_type=STARTTLS_NOT_SUPPORTED,
            expected="STARTTLS, as offered before",
            reason_code="remembered-starttls",
        )
    if cert_valid is False and cert_at is not None and cert_at >= since:
        return Finding(
            FindingKind.DOWNGRADE,
            evidence=(
                f"{history.host} presented a valid certificate at {_iso(cert_at)}; now it fails"
            ),
            result_type=VALIDATION_FAILURE,
            expected="a valid certificate, as presented before",
            reason_code="remembered-valid-certificate",
        )
    return None


def _iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TlsHistoryStore(Protocol):
    """Where remembered TLS lives: `relay.state.history_store.SqlTlsHistoryStore` (SQLite, or
    PostgreSQL shared by a fleet); implementations raise `detect.errors.HistoryStoreError`."""

    def get(self, host: str) -> HostHistory | None: ...

    def record(
        self, host: str, *, offered_starttls: bool, valid_cert: bool, now: float
    ) -> None: ...

    def forget(self, host: str) -> bool: ...

    def all(self) -> list[HostHistory]: ...


class MemoryTlsHistoryStore:
    """Remembered TLS in a dict (tests)."""

    def __init__(self) -> None:
        self._hosts: dict[str, HostHistory] = {}

    def get(self, host: str) -> HostHistory | None:
        return self._hosts.get(host_key(host))

    def record(self, host: str, *, offered_starttls: bool, valid_cert: bool, now: float) -> None:
        key = host_key(host)
        self._hosts[key] = updated(
            self._hosts.get(key),
            key,
            offered_starttls=offered_starttls,
            valid_cert=valid_cert,
            now=now,
        )

    def forget(self, host: str) -> bool:
        return self._hosts.pop(host_key(host), None) is not None

    def all(self) -> list[HostHistory]:
        return sorted(self._hosts.values(), key=lambda h: h.host)
