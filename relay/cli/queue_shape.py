"""`stsguard queue summary [--by-sender]`: the queue by destination (or sender) domain and age,
like Postfix's `qshape` (`qshape -s`).

Pure: messages and `now` in, a table out. A message counts once in each domain where it has a
pending recipient (so the TOTAL row sums the rows, as qshape's does); held messages are counted
apart, as qshape shows the hold queue apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from relay.queue.spool import QueuedMessage

# Upper bounds of the age columns in minutes, qshape's; the last column is anything older.
BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


@dataclass(frozen=True, slots=True)
class DomainRow:
    domain: str
    counts: tuple[int, ...]  # one per BUCKETS entry, then "older"

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True, slots=True)
class QueueShape:
    rows: tuple[DomainRow, ...]  # most messages first
    held: int

    @property
    def totals(self) -> tuple[int, ...]:
        return tuple(sum(col) for col in zip(*(r.counts for r in self.rows), strict=True)) or (
            (0,) * (len(BUCKETS) + 1)
        )


def age_column(age_seconds: float) -> int:
    minutes = age_seconds / 60
    for index, bound in enumerate(BUCKETS):
        if minutes <= bound:
            return index
    return len(BUCKETS)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".") if address else "<> (bounces)"


def queue_shape(
    messages: Iterable[QueuedMessage], now: float, *, by_sender: bool = False
) -> QueueShape:
    """Rows per recipient domain (per sender domain with `by_sender`, like `qshape -s`)."""
    counts: dict[str, list[int]] = {}
    held = 0
    for message in messages:
        if message.held:
            held += 1
            continue
        if not message.pending:
            continue
        column = age_column(now - message.received_at)
        domains = (
            {_domain(message.mail_from)}
            if by_sender
            else {_domain(r.address) for r in message.pending}
        )
        for domain in domains:
            counts.setdefault(domain, [0] * (len(BUCKETS) + 1))[column] += 1
    rows = sorted(
        (DomainRow(d, tuple(c)) for d, c in counts.items()), key=lambda r: (-r.total, r.domain)
    )
    return QueueShape(tuple(rows), held)


def shape_lines(shape: QueueShape) -> list[str]:
    """qshape's table: a header of age columns, TOTAL, then a row per domain."""
    width = max([len("TOTAL"), *(len(r.domain) for r in shape.rows)])
    header = ["T", *(str(b) for b in BUCKETS), f"{BUCKETS[-1]}+"]
    lines = [" " * width + " " + "".join(f"{h:>6}" for h in header)]
    totals = shape.totals
    for name, counts in [("TOTAL", totals), *((r.domain, r.counts) for r in shape.rows)]:
        cells = [sum(counts), *counts]
        lines.append(f"{name:>{width}} " + "".join(f"{c:>6}" for c in cells))
    lines.append("columns: messages by age in minutes (5 = up to 5 minutes old)")
    if shape.held:
        lines.append(f"held: {shape.held} message(s), not counted above (queue list shows them)")
    return lines


def shape_json(shape: QueueShape) -> dict[str, object]:
    labels = [str(b) for b in BUCKETS] + [f"{BUCKETS[-1]}+"]
    return {
        "age_minutes": labels,
        "total": {"messages": sum(shape.totals), "by_age": list(shape.totals)},
        "domains": [
            {"domain": r.domain, "messages": r.total, "by_age": list(r.counts)} for r in shape.rows
        ],
        "held": shape.held,
    }
