"""The changes a queued message's envelope goes through, as pure functions (old -> new).

`Spool.update` applies one under the queue's lock and writes the result durably (or removes the
message when nothing is left to do for it); these functions only say what changes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from relay.queue.envelope import HISTORY_MAX, HistoryEntry, QueuedMessage, Recipient, RecipientState


def with_history(message: QueuedMessage, *entries: HistoryEntry) -> tuple[HistoryEntry, ...]:
    """`message`'s history with `entries` added, the newest HISTORY_MAX kept."""
    return (*message.history, *entries)[-HISTORY_MAX:]


def _each_pending(message: QueuedMessage, new: Mapping[str, Recipient]) -> tuple[Recipient, ...]:
    return tuple(
        new.get(r.address, r) if r.status is RecipientState.PENDING else r
        for r in message.recipients
    )


def record_pass(
    message: QueuedMessage,
    *,
    delivered: Collection[str] = (),
    deferred: Mapping[str, str] | None = None,
    failed: Mapping[str, str] | None = None,
    next_attempt_at: float = 0.0,
    history: Sequence[HistoryEntry] = (),
    dsn_id: str,
    started: float = 0.0,
) -> QueuedMessage:
    """A pass's outcomes: `delivered` pending recipients done, `deferred` ones (with their
    reasons) due again at `next_attempt_at`, `failed` ones FAILED, their DSN to be queued as
    `dsn_id` (unless the message already has one); `started` is when the pass began (kept as
    the first attempt's time when it is the first)."""
    deferred, failed = deferred or {}, failed or {}
    done = set(delivered)
    new: dict[str, Recipient] = {}
    for r in message.pending:
        if r.address in done:
            # The error of an earlier attempt stays in the history, not on a delivered recipient.
            new[r.address] = replace(
                r, status=RecipientState.DELIVERED, attempts=r.attempts + 1, last_error=""
            )
        elif r.address in failed:
            new[r.address] = replace(
                r,
                status=RecipientState.FAILED,
                attempts=r.attempts + 1,
                last_error=failed[r.address],
            )
        elif r.address in deferred:
            new[r.address] = replace(
                r,
                attempts=r.attempts + 1,
                last_error=deferred[r.address] or r.last_error,
                next_attempt_at=next_attempt_at,
            )
    updated = replace(
        message, recipients=_each_pending(message, new), history=with_history(message, *history)
    )
    if started and not updated.first_attempt_at:
        updated = replace(updated, first_attempt_at=started)
    if updated.failed and not updated.dsn_id:
        updated = replace(updated, dsn_id=dsn_id)
    return updated


def dsn_queued(message: QueuedMessage, *, sent: bool, now: float) -> QueuedMessage:
    """The FAILED recipients reported (`sent`: a DSN went to the sender) and BOUNCED."""
    failed = len(message.failed)
    note = (
        f"{failed} recipient(s), DSN {message.dsn_id}" if sent else f"{failed} recipient(s), no DSN"
    )
    return replace(
        message,
        recipients=tuple(
            replace(r, status=RecipientState.BOUNCED) if r.status is RecipientState.FAILED else r
            for r in message.recipients
        ),
        dsn_id="",
        history=with_history(message, HistoryEntry(now, "", "bounced", note)),
    )


def warned(message: QueuedMessage, warning_id: str, *, now: float) -> QueuedMessage:
    """A "delayed" DSN, queued as `warning_id`, went out."""
    entry = HistoryEntry(now, "", "delay-warned", warning_id)
    return replace(message, warned=True, history=with_history(message, entry))


def held(message: QueuedMessage, reason: str, *, now: float) -> QueuedMessage:
    """Set aside until released."""
    entry = HistoryEntry(now, "", "held", reason)
    return replace(message, held=reason or "held", history=with_history(message, entry))


def due_now(message: QueuedMessage, now: float) -> QueuedMessage:
    """Every pending recipient due at `now`."""
    new = {r.address: replace(r, next_attempt_at=now) for r in message.pending}
    return replace(message, recipients=_each_pending(message, new))


def released(message: QueuedMessage, *, now: float) -> QueuedMessage:
    """No longer held, and due now."""
    entry = HistoryEntry(now, "", "released")
    return replace(due_now(message, now), held="", history=with_history(message, entry))


def without_recipients(
    message: QueuedMessage, rcpts: Collection[str], *, now: float
) -> QueuedMessage:
    """The named pending recipients taken out (DELETED): they are never delivered."""
    wanted = set(rcpts)
    new = {
        r.address: replace(r, status=RecipientState.DELETED)
        for r in message.pending
        if r.address in wanted
    }
    entry = HistoryEntry(now, "", "deleted", ", ".join(sorted(wanted)))
    return replace(
        message, recipients=_each_pending(message, new), history=with_history(message, entry)
    )
