"""`send_one` under a claim: a relay that finds the report claimed by another, or already moved
on by another's attempt, leaves it alone (no look-up, no send, nothing recorded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relay.state.database import SqliteDatabase
from relay.state.report_store import SqlReportStore
from tests.tlsrpt_emit.sessions import DAY, NOON
from tlsrpt_emit.schedule import Clients, ReportSettings, send_one
from tlsrpt_emit.store import SentReport

SETTINGS = ReportSettings(organization_name="Org", contact_info="tlsrpt@example.net")


class Untouchable:
    """Stands in for the resolver and the http client: any use fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"used {name} although the report was not this relay's to send")


def two_relays(tmp_path: Path) -> tuple[SqlReportStore, SqlReportStore]:
    path = tmp_path / "state.sqlite3"
    return (
        SqlReportStore(SqliteDatabase(path), holder="relay-a"),
        SqlReportStore(SqliteDatabase(path), holder="relay-b"),
    )


CLIENTS = Clients(Untouchable(), Untouchable())  # type: ignore[arg-type]


async def test_claimed_by_another_relay_is_left_alone(tmp_path: Path) -> None:
    a, b = two_relays(tmp_path)
    assert a.claim(DAY, "example.org", now=NOON, lease=900)  # a is sending it right now
    sent = await send_one(DAY, "example.org", b, settings=SETTINGS, clients=CLIENTS, now=NOON)
    assert sent == SentReport(day=DAY, domain="example.org", report_id="")
    assert b.get_sent(DAY, "example.org") is None  # b recorded nothing
    a.release(DAY, "example.org")


async def test_read_again_once_claimed(tmp_path: Path) -> None:
    a, b = two_relays(tmp_path)
    # b decided to send from what it read earlier; meanwhile a delivered it.
    delivered = SentReport(
        DAY, "example.org", "r1", ("https://r/",), 1, NOON, None, "", "delivered"
    )
    a.put_sent(delivered)
    got = await send_one(DAY, "example.org", b, settings=SETTINGS, clients=CLIENTS, now=NOON)
    assert got == delivered
    # Or a's failed attempt moved the retry past now: a due-only retry by b waits for it.
    later = SentReport(DAY, "other.example", "r2", (), 1, NOON, NOON + 300, "refused", "pending")
    a.put_sent(later)
    got = await send_one(
        DAY, "other.example", b, settings=SETTINGS, clients=CLIENTS, now=NOON + 1, only_if_due=True
    )
    assert got == later
    # Each attempt gave its claim back: the next relay need not wait for a lease.
    assert a.claim(DAY, "example.org", now=NOON + 2, lease=900)
    assert a.claim(DAY, "other.example", now=NOON + 2, lease=900)
