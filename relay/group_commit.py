"""Group commit: messages that finish DATA together go to disk together.

Each accepted message needs an ``fsync`` of its file and of the queue directory before its 250.
`GroupCommit.put` queues the message and waits; one writer task hands everything waiting to
`Spool.commit` in one trip to a worker thread, which syncs every file and then the directory
once. While that batch is on its way to the disk the next one gathers, so under load a directory
sync and a thread hand-off serve many sessions, and a lone message still goes at once.
"""

from __future__ import annotations

import asyncio

from relay.errors import SpoolError
from relay.spool import QueuedMessage, Spool

_Waiting = tuple[QueuedMessage, bytes, asyncio.Future[None]]


class GroupCommit:
    """Batches `Spool.commit` calls from concurrent intake sessions."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._waiting: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # how many commits were made (for tests and the benchmark)

    async def put(self, message: QueuedMessage, data: bytes) -> None:
        """Return once `message` is durable in the queue; `SpoolError` when it is not queued."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((message, data, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await future

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            self.batches += 1
            try:
                errors = await asyncio.to_thread(self.spool.commit, [(m, d) for m, d, _ in batch])
            except asyncio.CancelledError:
                for _, _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # a bug rather than the disk: commit reports OSError itself
                errors = [SpoolError(f"cannot queue a message: {exc!r}")] * len(batch)
            for (_, _, future), error in zip(batch, errors, strict=True):
                if future.done():
                    continue  # its session went away; the message is queued all the same
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
