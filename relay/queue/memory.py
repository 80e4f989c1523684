"""The queue in memory and what others tell it: the control API of the queue manager.

Due times and destinations (`relay.queue.scheduler`), the messages in the queue and the bytes
held (`relay.queue.index`), the passes under way and the outcomes a failed write still owes the
disk. Intake (`submit`, `wake`), ``stsguard queue`` through the control socket (`schedule`,
`forget`, `flush`, `flush_some`) and other processes (`wake`) change it here; the loop in
`relay.queue.runner` acts on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from relay.config import Config
from relay.queue.index import MemoryBudget, QueueIndex
from relay.queue.passes import Pass
from relay.queue.scheduler import Destinations, DueTimes
from relay.queue.spool import QueuedMessage, ScanEntry


class QueueMemory:
    """The queue manager's memory; every change wakes the loop."""

    def __init__(self, config: Config, clock: Callable[[], float], budget: MemoryBudget) -> None:
        self.config = config
        self.clock = clock
        self.due = DueTimes()
        self.dests = Destinations(
            workers=config.delivery.workers,
            per_destination=config.delivery.concurrency_per_destination,
        )
        self.index = QueueIndex()
        self.budget = budget
        self._passes: dict[str, Pass] = {}
        self._unwritten: dict[str, Pass] = {}  # outcomes a failed write still owes the disk
        self._fresh: list[tuple[QueuedMessage, bytes | None]] = []
        self._woken: set[str] = set()  # just queued elsewhere: read with its bytes
        self._wake = asyncio.Event()

    def size(self) -> int:
        """Messages in the queue that are not held."""
        return len(self.index)

    def submit(self, message: QueuedMessage, data: bytes) -> None:
        """A message this process just queued: deliver it now, from memory when it fits."""
        self._fresh.append((message, self.budget.hold(data)))
        self.index.known(message.id, message.received_at)
        self._wake.set()

    def wake(self, queue_id: str) -> None:
        """Message `queue_id` was queued or changed by another process: look at it now."""
        if queue_id not in self._passes:
            self.due.set(queue_id, 0.0)
            self._woken.add(queue_id)
        self._wake.set()

    def schedule(self, queue_id: str, when: float | None = None) -> None:
        """(Re)consider `queue_id` at `when` (default now), e.g. after `queue release`."""
        self.dests.unpark([queue_id])
        self.index.held.discard(queue_id)
        if queue_id not in self._passes:
            self.due.set(queue_id, self.clock() if when is None else when)
        self._wake.set()

    def forget(self, queue_ids: Iterable[str], *, held: bool = False) -> None:
        """Messages deleted or (`held`) held: no further pass (one in flight ends without
        rescheduling: its write finds the message gone or held)."""
        ids = list(queue_ids)
        for queue_id in ids:
            self.due.discard(queue_id)
            self._unwritten.pop(queue_id, None)
            self.index.gone(queue_id, held=held)
        self.dests.unpark(ids)

    def adopt(self, entries: Iterable[ScanEntry]) -> int:
        """Messages in the spool this process was never told of (queued by a program that did
        not say so): due now. Returns how many; `stsguard queue flush` finds them this way."""
        now = self.clock()
        found = 0
        for e in entries:
            known = e.id in self.index.received or e.id in self.due or e.id in self._passes
            if e.held or e.due is None or known:
                continue
            self.index.known(e.id, e.received_at)
            self.due.set(e.id, now)
            found += 1
        if found:
            self._wake.set()
        return found

    def flush(self) -> int:
        """Everything due now and every dead destination alive (`stsguard queue flush`)."""
        now = self.clock()
        for queue_id in self.dests.revive_all():
            self.due.set(queue_id, now)
        count = self.due.all_now(now)
        self._wake.set()
        return count + len(self._passes)

    def flush_some(self, queue_ids: Iterable[str], domain: str = "") -> int:
        """`stsguard queue flush ID... | --domain D`: these messages due now (held ones stay
        held) and, with `domain`, that destination alive again."""
        now = self.clock()
        for queue_id in self.dests.revive(domain) if domain else []:
            self.due.set(queue_id, now)
        count = 0
        for queue_id in queue_ids:
            if queue_id in self.index.held:
                continue
            self.dests.unpark([queue_id])
            if queue_id not in self._passes:
                self.due.set(queue_id, now)
            count += 1
        self._wake.set()
        return count

    def poke(self) -> None:
        """Look at the clock again now (after a jump of the clock the runner was given)."""
        self._wake.set()
