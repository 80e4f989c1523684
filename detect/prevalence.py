"""Downgrade prevalence: how the relay's own sessions to each MX host went, per UTC day (pure).

One `SessionSeen` per session the relay opened to an MX address (a pooled session reused for
another message is not a new session). `count_session` adds it to a batch keyed by (day, host,
address), and again under (day, recipient domain) when the domain is known; each key counts
measures, some with a detail (the garbled token, the refusal's reply
code, the handshake failure's RFC 8460 result type). Batches are summed into the store, so the
relays of a fleet add up in one table; `detect.prevalence_view` turns stored rows into shares.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from detect.model import Finding, FindingKind

MAX_DETAIL = 40
"""Characters of a detail kept (a garbled token is what a peer chose to send)."""


class Measure(StrEnum):
    """What is counted per (day, host, address). All but `INJECTED_BYTES` count sessions."""

    SESSIONS = "sessions"
    STARTTLS_OFFERED = "starttls-offered"
    STARTTLS_ABSENT = "starttls-absent"  # no STARTTLS keyword at all (not even a garbled one)
    GARBLED = "garbled"  # detail: the token seen instead of STARTTLS, e.g. XXXXXXXA
    REFUSED = "refused"  # detail: the STARTTLS reply code (454, 501, ...)
    HANDSHAKE_FAILURE = "handshake-failure"  # detail: the RFC 8460 result type
    INJECTED = "injected"  # bytes arrived between the 220 and the handshake
    INJECTED_BYTES = "injected-bytes"  # how many such bytes in all
    PLAINTEXT = "plaintext"  # the session carried mail without TLS
    STARTTLS_LOST = "starttls-lost"  # offered STARTTLS within history_days, not now
    DOWNGRADED = "downgraded"  # any sign of tampering: garbled, refused, injected, lost


class SessionKind(StrEnum):
    """The worst thing one session showed: a bounded metric label (never the host)."""

    CLEAN = "clean"
    STARTTLS_ABSENT = "starttls-absent"
    STARTTLS_GARBLED = "starttls-garbled"
    STARTTLS_REFUSED = "starttls-refused"
    PLAINTEXT_INJECTION = "plaintext-injection"
    STARTTLS_LOST = "starttls-lost"
    HANDSHAKE_FAILURE = "handshake-failure"


@dataclass(frozen=True, slots=True)
class SessionSeen:
    """What one session to one MX address showed, as far as prevalence is concerned."""

    host: str
    address: str
    when: float
    offered_starttls: bool
    garbled_token: str = ""
    refused_code: int | None = None
    handshake_failure: str = ""  # RFC 8460 result type, "" when none failed
    injected_bytes: int = 0
    plaintext: bool = False  # mail went over this session without TLS
    starttls_lost: bool = False
    domain: str = ""  # the recipient domain the session was opened for

    @property
    def downgraded(self) -> bool:
        return bool(
            self.garbled_token
            or self.refused_code is not None
            or self.injected_bytes
            or self.starttls_lost
        )

    @property
    def kind(self) -> SessionKind:
        if self.injected_bytes:
            return SessionKind.PLAINTEXT_INJECTION
        if self.garbled_token:
            return SessionKind.STARTTLS_GARBLED
        if self.refused_code is not None:
            return SessionKind.STARTTLS_REFUSED
        if self.starttls_lost:
            return SessionKind.STARTTLS_LOST
        if self.handshake_failure:
            return SessionKind.HANDSHAKE_FAILURE
        if not self.offered_starttls:
            return SessionKind.STARTTLS_ABSENT
        return SessionKind.CLEAN


_CODE = re.compile(r"^\s*(\d{3})\b")
_MORE_BYTES = re.compile(r"\(\+(\d+) bytes\)$")
_SHOWN_BYTES = 64  # detect.starttls shows this many injected bytes in the evidence


def injected_length(evidence: str) -> int:
    """How many bytes a `plaintext-injection` finding's evidence stands for (at least 1)."""
    more = _MORE_BYTES.search(evidence)
    if more:
        return _SHOWN_BYTES + int(more.group(1))
    try:
        shown = ast.literal_eval(evidence)
    except (ValueError, SyntaxError):
        return 1
    return max(1, len(shown)) if isinstance(shown, bytes) else 1


def garbled_token(evidence: str) -> str:
    """The keyword a `starttls-garbled` finding saw (``250-XXXXXXXA`` -> ``XXXXXXXA``)."""
    line = evidence[4:] if evidence[:4] in ("250-", "250 ") else evidence
    words = line.split()
    return words[0][:MAX_DETAIL] if words else "?"


def session_seen(
    host: str,
    address: str,
    *,
    when: float,
    offered_starttls: bool,
    findings: Iterable[Finding],
    handshake_failure: str = "",
    plaintext: bool = False,
    domain: str = "",
) -> SessionSeen:
    """A session's prevalence facts from what the detectors found in it."""
    token, code, injected, lost = "", None, 0, False
    for finding in findings:
        if finding.kind is FindingKind.STARTTLS_GARBLED and not token:
            token = garbled_token(finding.evidence)
        elif finding.kind in (FindingKind.STARTTLS_REJECTED, FindingKind.STARTTLS_BAD_REPLY):
            match = _CODE.match(finding.evidence)
            code = int(match.group(1)) if match else 0
        elif finding.kind is FindingKind.PLAINTEXT_INJECTION:
            injected += injected_length(finding.evidence)
        elif finding.kind is FindingKind.DOWNGRADE:
            lost = lost or finding.reason_code == "remembered-starttls"
    return SessionSeen(
        host=host_name(host),
        address=address,
        when=when,
        offered_starttls=offered_starttls,
        garbled_token=token,
        refused_code=code,
        handshake_failure=handshake_failure,
        injected_bytes=injected,
        plaintext=plaintext,
        starttls_lost=lost,
        domain=host_name(domain),
    )


def host_name(host: str) -> str:
    return host.strip().lower().rstrip(".")


def utc_day(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).date().isoformat()


@dataclass(frozen=True, slots=True, order=True)
class PrevalenceKey:
    """(day, MX host, address), or (day, recipient domain) with `host` and `address` empty."""

    day: str  # YYYY-MM-DD, UTC
    host: str
    address: str
    domain: str = ""


Batch = dict[PrevalenceKey, Counter[tuple[str, str]]]
"""(day, host, address) or (day, domain) -> (measure, detail) -> count: what is added to the
store at once."""


def count_session(batch: Batch, seen: SessionSeen) -> None:
    """Add one session to `batch`, per MX address and per recipient domain (pure apart from
    mutating `batch`)."""
    day = utc_day(seen.when)
    _count_into(batch.setdefault(PrevalenceKey(day, seen.host, seen.address), Counter()), seen)
    if seen.domain:
        _count_into(batch.setdefault(PrevalenceKey(day, "", "", seen.domain), Counter()), seen)


def _count_into(counts: Counter[tuple[str, str]], seen: SessionSeen) -> None:
    counts[(Measure.SESSIONS, "")] += 1
    if seen.offered_starttls:
        counts[(Measure.STARTTLS_OFFERED, "")] += 1
    elif not seen.garbled_token:
        counts[(Measure.STARTTLS_ABSENT, "")] += 1
    if seen.garbled_token:
        counts[(Measure.GARBLED, seen.garbled_token[:MAX_DETAIL])] += 1
    if seen.refused_code is not None:
        counts[(Measure.REFUSED, str(seen.refused_code))] += 1
    if seen.handshake_failure:
        counts[(Measure.HANDSHAKE_FAILURE, seen.handshake_failure[:MAX_DETAIL])] += 1
    if seen.injected_bytes:
        counts[(Measure.INJECTED, "")] += 1
        counts[(Measure.INJECTED_BYTES, "")] += seen.injected_bytes
    if seen.plaintext:
        counts[(Measure.PLAINTEXT, "")] += 1
    if seen.starttls_lost:
        counts[(Measure.STARTTLS_LOST, "")] += 1
    if seen.downgraded:
        counts[(Measure.DOWNGRADED, "")] += 1


def merge_batch(into: Batch, other: Mapping[PrevalenceKey, Counter[tuple[str, str]]]) -> None:
    for key, counts in other.items():
        into.setdefault(key, Counter()).update(counts)


@dataclass(frozen=True, slots=True)
class PrevalenceRow:
    """One stored count: a measure (with its detail) of one host address, or of one recipient
    domain (`host` and `address` empty), on one day."""

    day: str
    host: str
    address: str
    measure: str
    detail: str
    count: int
    domain: str = ""


def rows_of(batch: Batch) -> list[PrevalenceRow]:
    return [
        PrevalenceRow(key.day, key.host, key.address, measure, detail, count, key.domain)
        for key, counts in sorted(batch.items())
        for (measure, detail), count in sorted(counts.items())
    ]


DOWNGRADE_SIGNS = (Measure.GARBLED, Measure.REFUSED, Measure.INJECTED, Measure.STARTTLS_LOST)
"""The measures that make a session count as `downgraded`."""


def downgrade_signs(batch: Batch, host: str) -> set[str]:
    """The downgrade signs a batch counted for one host."""
    return {
        measure
        for key, counts in batch.items()
        if key.host == host and not key.domain
        for (measure, _), n in counts.items()
        if measure in DOWNGRADE_SIGNS and n
    }


def new_downgrades(batch: Batch, earlier: Iterable[PrevalenceRow]) -> dict[str, set[str]]:
    """Per host, the downgrade signs `batch` shows that `earlier` rows of that host did not."""
    before: dict[str, set[str]] = {}
    for row in earlier:
        if row.host and row.measure in DOWNGRADE_SIGNS and row.count:
            before.setdefault(row.host, set()).add(row.measure)
    hosts = {
        key.host for key, counts in batch.items() if key.host and counts[(Measure.DOWNGRADED, "")]
    }
    found = {host: downgrade_signs(batch, host) - before.get(host, set()) for host in hosts}
    return {host: signs for host, signs in found.items() if signs}


def first_day(today: str, days: int) -> str:
    """The first UTC day of the `days` days that end with `today`."""
    start = dt.date.fromisoformat(today) - dt.timedelta(days=max(days, 1) - 1)
    return start.isoformat()


class PrevalenceStore(Protocol):
    """Where prevalence counts live: `relay.state.prevalence_store.SqlPrevalenceStore` (SQLite,
    or PostgreSQL shared by a fleet); implementations raise `PrevalenceStoreError`."""

    def add(self, batch: Batch) -> None: ...

    def rows(self, since_day: str, host: str = "", domain: str = "") -> list[PrevalenceRow]:
        """The rows since a day: of one MX host, of one recipient domain, or all."""
        ...

    def prune(self, before_day: str) -> int: ...


class MemoryPrevalenceStore:
    """Prevalence counts in a dict (tests)."""

    def __init__(self) -> None:
        self.batch: Batch = {}

    def add(self, batch: Batch) -> None:
        merge_batch(self.batch, batch)

    def rows(self, since_day: str, host: str = "", domain: str = "") -> list[PrevalenceRow]:
        return [
            row
            for row in rows_of(self.batch)
            if row.day >= since_day
            and (not host or row.host == host_name(host))
            and (not domain or row.domain == host_name(domain))
        ]

    def prune(self, before_day: str) -> int:
        old = [key for key in self.batch if key.day < before_day]
        return sum(len(self.batch.pop(key)) for key in old)  # rows, as SQL counts them
