"""What the queue manager keeps in memory besides the schedule: which messages are in the queue
(for the size and age metrics) and how many message bytes it holds between intake and delivery."""

from __future__ import annotations

from collections.abc import Callable

from relay.metrics import Metrics

# Message bytes kept in memory between intake and delivery, at most; past it a message is read
# back from the spool when its turn comes, so a backlog does not grow the process.
HELD_BYTES_MAX = 64 * 1024 * 1024
# The queue metrics (messages by state, oldest age) are worked out at most this often.
REPORT_SECONDS = 5.0


class QueueIndex:
    """Every message in the queue and not held -> when it was received (for the oldest
    message's age); held ones by id. About 100 bytes a message."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.held: set[str] = set()
        self.report_at = 0.0
        self.changed = True  # since the last report

    def __len__(self) -> int:
        """Messages in the queue that are not held."""
        return len(self.received)

    def known(self, queue_id: str, received_at: float) -> None:
        self.received[queue_id] = received_at
        self.changed = True

    def gone(self, queue_id: str, *, held: bool = False) -> None:
        self.changed = True
        self.received.pop(queue_id, None)
        if held:
            self.held.add(queue_id)
        else:
            self.held.discard(queue_id)

    def report(
        self, metrics: Metrics | None, active: int, now: float, clock: Callable[[], float]
    ) -> None:
        """The queue's size by state for the metrics, at most every REPORT_SECONDS."""
        if metrics is None or now < self.report_at or not self.changed:
            return
        self.report_at = now + REPORT_SECONDS
        self.changed = False
        active = min(active, len(self.received))
        by_state = {
            "active": active,
            "deferred": len(self.received) - active,
            "hold": len(self.held),
        }
        oldest = min(self.received.values()) if self.received else None
        metrics.set_queue(by_state, oldest, clock=clock)


class MemoryBudget:
    """Message bytes held in memory, at most `limit`."""

    def __init__(self, limit: int = HELD_BYTES_MAX) -> None:
        self.limit = limit
        self.held_bytes = 0

    def hold(self, data: bytes) -> bytes | None:
        """`data` when it fits the budget (and counts against it), else None."""
        if self.held_bytes + len(data) > self.limit:
            return None
        self.held_bytes += len(data)
        return data

    def release(self, data: bytes | None) -> None:
        """`data`, held before, is let go."""
        if data is not None:
            self.held_bytes -= len(data)
