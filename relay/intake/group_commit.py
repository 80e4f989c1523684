"""Group commit: spool work that many tasks ask for at once goes to disk together.

Each accepted message needs an ``fsync`` of its file and of the queue directory before its 250.
`GroupCommit.put` queues the message and waits; one writer task hands everything waiting to
`Spool.commit` in one trip to a worker thread, which syncs every file and then the directory
once. While that batch is on its way to the disk the next one gathers, so under load a directory
sync and a thread hand-off serve many sessions, and a lone message still goes at once.
The mechanism is `relay.thread_batch.ThreadBatch`, which the queue manager also uses.
"""

from __future__ import annotations

from relay.queue.spool import QueuedMessage, Spool
from relay.thread_batch import ThreadBatch


class GroupCommit:
    """Batches `Spool.commit` calls from concurrent intake sessions."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._batch: ThreadBatch[tuple[QueuedMessage, bytes]] = ThreadBatch(spool.commit)

    @property
    def batches(self) -> int:
        return self._batch.batches

    async def put(self, message: QueuedMessage, data: bytes) -> None:
        """Return once `message` is durable in the queue; `SpoolError` when it is not queued."""
        await self._batch((message, data))
