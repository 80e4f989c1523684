"""Downgrade prevalence as shares: per MX host, per network (/24, /48), per recipient domain and
per day (pure).

Stored rows (`detect.prevalence.PrevalenceRow`) are summed per host, per network of the host's
addresses, or per day; a share is a measure's count over the sessions. Hosts and networks come
worst first: the largest downgraded share, then handshake failures, plaintext deliveries, hosts
without STARTTLS.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from detect.prevalence import Measure, PrevalenceRow

_SHARES = (
    Measure.STARTTLS_OFFERED,
    Measure.STARTTLS_ABSENT,
    Measure.GARBLED,
    Measure.REFUSED,
    Measure.HANDSHAKE_FAILURE,
    Measure.INJECTED,
    Measure.PLAINTEXT,
    Measure.STARTTLS_LOST,
    Measure.DOWNGRADED,
)
_DETAILED = (Measure.GARBLED, Measure.REFUSED, Measure.HANDSHAKE_FAILURE)


def network_of(address: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) an address is in; the address itself when it is none."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address or "-"
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass(slots=True)
class SiteStats:
    """The sums of one host, network or day."""

    name: str
    hosts: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)
    days: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    details: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    @property
    def sessions(self) -> int:
        return self.counts[Measure.SESSIONS]

    def share(self, measure: str) -> float:
        return self.counts[measure] / self.sessions if self.sessions else 0.0

    def add(self, row: PrevalenceRow) -> None:
        if row.host:
            self.hosts.add(row.host)
            self.addresses.add(row.address)
        self.days.add(row.day)
        self.counts[row.measure] += row.count
        if row.detail:
            self.details[row.measure][row.detail] += row.count

    def worst_first(self) -> tuple[float, float, float, float, int, str]:
        return (
            -self.share(Measure.DOWNGRADED),
            -self.share(Measure.HANDSHAKE_FAILURE),
            -self.share(Measure.PLAINTEXT),
            -self.share(Measure.STARTTLS_ABSENT),
            -self.sessions,
            self.name,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hosts": sorted(self.hosts),
            "addresses": sorted(self.addresses),
            "first_day": min(self.days) if self.days else None,
            "last_day": max(self.days) if self.days else None,
            "sessions": self.sessions,
            "counts": {str(m): self.counts[m] for m in (*_SHARES, Measure.INJECTED_BYTES)},
            "shares": {str(m): round(self.share(m), 4) for m in _SHARES},
            "details": {str(m): dict(sorted(self.details[m].items())) for m in _DETAILED},
        }


def _grouped(
    rows: Iterable[PrevalenceRow], name: Callable[[PrevalenceRow], str]
) -> list[SiteStats]:
    sites: dict[str, SiteStats] = {}
    for row in rows:
        key = name(row)
        sites.setdefault(key, SiteStats(key)).add(row)
    return list(sites.values())


def _per_host(rows: Iterable[PrevalenceRow]) -> list[PrevalenceRow]:
    """The rows counted per MX address (each session once; domain rows count it again)."""
    return [r for r in rows if not r.domain]


def by_host(rows: Iterable[PrevalenceRow]) -> list[SiteStats]:
    return sorted(_grouped(_per_host(rows), lambda r: r.host), key=SiteStats.worst_first)


def by_network(rows: Iterable[PrevalenceRow]) -> list[SiteStats]:
    grouped = _grouped(_per_host(rows), lambda r: network_of(r.address))
    return sorted(grouped, key=SiteStats.worst_first)


def by_domain(rows: Iterable[PrevalenceRow]) -> list[SiteStats]:
    """Per recipient domain: how mail to it went, whichever of its MX hosts took it."""
    grouped = _grouped([r for r in rows if r.domain], lambda r: r.domain)
    return sorted(grouped, key=SiteStats.worst_first)


def by_day(rows: Iterable[PrevalenceRow]) -> list[SiteStats]:
    """Per day; counted per MX address, or per domain when only domain rows are given."""
    given = list(rows)
    per_host = _per_host(given)
    return sorted(_grouped(per_host or given, lambda r: r.day), key=lambda s: s.name)


_COLUMNS = (
    ("sessions", None),
    ("tls", Measure.STARTTLS_OFFERED),
    ("absent", Measure.STARTTLS_ABSENT),
    ("garbled", Measure.GARBLED),
    ("refused", Measure.REFUSED),
    ("hs-fail", Measure.HANDSHAKE_FAILURE),
    ("inject", Measure.INJECTED),
    ("lost", Measure.STARTTLS_LOST),
    ("plain", Measure.PLAINTEXT),
    ("downgr", Measure.DOWNGRADED),
)


def _percent(site: SiteStats, measure: Measure | None) -> str:
    if measure is None:
        return str(site.sessions)
    return f"{100 * site.share(measure):.0f}%" if site.counts[measure] else "-"


def _detail(site: SiteStats) -> str:
    parts = []
    for measure in _DETAILED:
        seen = site.details.get(measure)
        if seen:
            shown = ", ".join(f"{d} x{n}" for d, n in seen.most_common(5))
            parts.append(f"{measure}: {shown}")
    return "; ".join(parts)


def format_table(title: str, sites: Iterable[SiteStats]) -> str:
    """A text table: one line per site with its shares, and what was garbled or refused."""
    shown = list(sites)
    header = (title, *(name for name, _ in _COLUMNS))
    body = [(s.name, *(_percent(s, m) for _, m in _COLUMNS)) for s in shown]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = []
    for row, site in zip([header, *body], [None, *shown], strict=True):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if site is not None and (detail := _detail(site)):
            lines.append(f"    {detail}")
    return "\n".join(lines)
