"""The envelope changes `Spool.update` applies (relay.queue.changes): pure, old -> new."""

from __future__ import annotations

import pytest

from relay.queue import changes
from relay.queue.envelope import HISTORY_MAX, HistoryEntry, QueuedMessage, Recipient
from relay.queue.envelope import RecipientState as S

NOW = 5000.0


def message(*states: S, history: int = 0) -> QueuedMessage:
    rcpts = tuple(
        Recipient(f"r{n}@d{n}.test", state, attempts=1, next_attempt_at=10.0, last_error="451 x")
        for n, state in enumerate(states)
    )
    entries = tuple(HistoryEntry(float(n), "", "deferred") for n in range(history))
    return QueuedMessage("ABCDEFGHIJKLMNOP", "a@x.test", rcpts, 1.0, 10, history=entries)


def states(m: QueuedMessage) -> list[S]:
    return [r.status for r in m.recipients]


def test_a_pass_records_each_outcome_on_pending_recipients_only() -> None:
    before = message(S.PENDING, S.PENDING, S.PENDING, S.DELIVERED)
    after = changes.record_pass(
        before,
        delivered=["r0@d0.test", "r3@d3.test"],  # r3 was delivered before: untouched
        deferred={"r1@d1.test": "452 full"},
        failed={"r2@d2.test": "550 no"},
        next_attempt_at=NOW,
        history=[HistoryEntry(NOW, "d0.test", "delivered")],
        dsn_id="QRSTUVWXYZ234567",
        started=NOW - 1,
    )
    assert states(after) == [S.DELIVERED, S.PENDING, S.FAILED, S.DELIVERED]
    r0, r1, r2, r3 = after.recipients
    assert (r0.attempts, r0.last_error) == (2, "")  # delivered: an old error is not kept
    assert (r1.attempts, r1.last_error, r1.next_attempt_at) == (2, "452 full", NOW)
    assert (r2.attempts, r2.last_error) == (2, "550 no")
    assert r3 == before.recipients[3]
    assert after.dsn_id == "QRSTUVWXYZ234567"
    assert after.first_attempt_at == NOW - 1
    assert after.history[-1].outcome == "delivered"


@pytest.mark.parametrize(
    ("before", "failed", "dsn_id"),
    [
        (message(S.PENDING), {}, ""),  # nothing failed: no DSN id
        (message(S.PENDING), {"r0@d0.test": "550"}, "NEW"),
    ],
)
def test_the_dsn_id_is_set_with_the_first_failure(
    before: QueuedMessage, failed: dict[str, str], dsn_id: str
) -> None:
    after = changes.record_pass(before, failed=failed, dsn_id="NEW")
    assert after.dsn_id == dsn_id


def test_an_earlier_dsn_id_and_first_attempt_are_kept() -> None:
    before = changes.record_pass(
        message(S.PENDING, S.PENDING), failed={"r0@d0.test": "550"}, dsn_id="FIRST", started=7.0
    )
    after = changes.record_pass(before, failed={"r1@d1.test": "550"}, dsn_id="SECOND", started=NOW)
    assert (after.dsn_id, after.first_attempt_at) == ("FIRST", 7.0)


@pytest.mark.parametrize(("sent", "note"), [(True, "DSN DSNID"), (False, "no DSN")])
def test_dsn_queued_bounces_the_failed_and_clears_the_id(sent: bool, note: str) -> None:
    before = changes.record_pass(
        message(S.PENDING, S.PENDING), failed={"r0@d0.test": "550"}, dsn_id="DSNID"
    )
    after = changes.dsn_queued(before, sent=sent, now=NOW)
    assert states(after) == [S.BOUNCED, S.PENDING]
    assert after.dsn_id == ""
    assert after.history[-1] == HistoryEntry(NOW, "", "bounced", f"1 recipient(s), {note}")


def test_hold_release_and_delete_recipients() -> None:
    held = changes.held(message(S.PENDING, S.DELIVERED), "", now=NOW)
    assert held.held == "held"
    released = changes.released(held, now=NOW + 1)
    assert released.held == ""
    assert [r.next_attempt_at for r in released.recipients] == [NOW + 1, 10.0]
    assert [e.outcome for e in released.history] == ["held", "released"]
    gone = changes.without_recipients(message(S.PENDING, S.PENDING), ["r1@d1.test"], now=NOW)
    assert states(gone) == [S.PENDING, S.DELETED]
    assert gone.history[-1].reason == "r1@d1.test"


def test_warned_and_due_now() -> None:
    warned = changes.warned(message(S.PENDING), "WARNID", now=NOW)
    assert warned.warned
    assert warned.history[-1] == HistoryEntry(NOW, "", "delay-warned", "WARNID")
    due = changes.due_now(message(S.PENDING, S.FAILED), NOW)
    assert [r.next_attempt_at for r in due.recipients] == [NOW, 10.0]


def test_the_history_keeps_the_newest_lines() -> None:
    after = changes.held(message(S.PENDING, history=HISTORY_MAX), "x", now=NOW)
    assert len(after.history) == HISTORY_MAX
    assert after.history[0].at == 1.0
    assert after.history[-1].outcome == "held"
