"""`ThreadBatch`: blocking work that many tasks ask for at once goes to one worker thread together.

Intake's group commit (`relay.intake.group_commit`) queues messages with it, and the queue
manager removes delivered messages with it (`Spool.finish`): under load one thread hand-off and
one directory sync serve many callers, and a lone item still goes at once. Work that can be
tried without blocking (`inline`) is done on the event loop, and goes to the thread only when
that would have to wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from relay.errors import SpoolError

T = TypeVar("T")


class ThreadBatch(Generic[T]):
    """Calls ``work(items) -> errors`` in a worker thread for every item asked for meanwhile.

    `work` returns one ``SpoolError | None`` per item, in order; `inline`, when given, the same
    without blocking, or None when it would block (then `work` runs in the thread)."""

    def __init__(
        self,
        work: Callable[[Sequence[T]], Sequence[SpoolError | None]],
        *,
        inline: Callable[[Sequence[T]], Sequence[SpoolError | None] | None] | None = None,
    ) -> None:
        self.work = work
        self.inline = inline
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.batches = 0  # how many batches were done (for tests and the benchmark)
        self.threaded = 0  # how many of them went to the worker thread

    async def __call__(self, item: T) -> None:
        """Return once `work` has done `item`; raises the error it reported for it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        await future

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            self.batches += 1
            items = [item for item, _ in batch]
            try:
                errors = self.inline(items) if self.inline is not None else None
                if errors is None:
                    self.threaded += 1
                    errors = await asyncio.to_thread(self.work, items)
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # a bug rather than the disk: `work` reports OSError itself
                errors = [SpoolError(f"spool: {exc!r}")] * len(batch)
            for (_, future), error in zip(batch, errors, strict=True):
                if future.done():
                    continue  # its caller went away; the work is done all the same
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
