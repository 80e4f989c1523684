"""Group commit: sessions that finish together share one commit, and each hears its own result."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from pathlib import Path

import pytest

from relay.errors import SpoolError
from relay.intake.group_commit import GroupCommit
from relay.queue.spool import QueuedMessage, Spool
from relay.thread_batch import ThreadBatch


class HeldSpool(Spool):
    """A spool whose first commit waits for `release`, and which records every batch size."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []

    def commit(self, batch: list[tuple[QueuedMessage, bytes]]) -> list[SpoolError | None]:  # type: ignore[override]
        self.sizes.append(len(batch))
        self.entered.set()
        assert self.release.wait(5)
        return super().commit(batch)


async def test_waiting_messages_share_the_next_commit(tmp_path: Path) -> None:
    spool = HeldSpool(tmp_path / "q")
    commits = GroupCommit(spool)
    messages = [spool.new_message("a@x", ["b@y"], 1) for _ in range(6)]
    first = asyncio.create_task(commits.put(messages[0], b"0"))
    assert await asyncio.to_thread(spool.entered.wait, 5)
    rest = [asyncio.create_task(commits.put(m, b"n")) for m in messages[1:]]
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in [first, *rest])  # nobody is told before the disk is
    spool.release.set()
    await asyncio.gather(first, *rest)
    assert spool.sizes == [1, 5]
    assert {m.id for m in spool.list()} == {m.id for m in messages}


async def test_each_waiter_gets_its_own_error(tmp_path: Path) -> None:
    class HalfBroken(Spool):
        def commit(self, batch: list[tuple[QueuedMessage, bytes]]) -> list[SpoolError | None]:  # type: ignore[override]
            return [SpoolError("disk full") if d == b"bad" else None for _, d in batch]

    spool = HalfBroken(tmp_path / "q")
    commits = GroupCommit(spool)
    good, bad = (spool.new_message("a@x", ["b@y"], 3) for _ in range(2))
    results = await asyncio.gather(
        commits.put(good, b"ok!"), commits.put(bad, b"bad"), return_exceptions=True
    )
    assert results[0] is None
    assert isinstance(results[1], SpoolError)


async def test_a_session_that_goes_away_does_not_stop_the_batch(tmp_path: Path) -> None:
    spool = HeldSpool(tmp_path / "q")
    commits = GroupCommit(spool)
    gone, stays = (spool.new_message("a@x", ["b@y"], 1) for _ in range(2))
    a = asyncio.create_task(commits.put(gone, b"1"))
    b = asyncio.create_task(commits.put(stays, b"2"))
    assert await asyncio.to_thread(spool.entered.wait, 5)
    a.cancel()
    spool.release.set()
    await b
    with pytest.raises(asyncio.CancelledError):
        await a
    # Queued all the same: its client saw no 250 and will send it again (a duplicate, never a loss).
    assert {m.id for m in spool.list()} == {gone.id, stays.id}


async def test_removals_run_on_the_loop_unless_the_lock_is_held(tmp_path: Path) -> None:
    """Delivered mail is removed without a thread hand-off; when another process holds the spool
    lock exclusively, the removal waits for it in the worker thread instead of on the loop."""
    spool = Spool(tmp_path / "q")
    ids = [spool.put("a@x", ["b@y"], b"m") for _ in range(3)]
    removals = ThreadBatch(spool.finish, inline=spool.finish_now)
    await asyncio.gather(removals(ids[0]), removals(ids[1]))
    assert (removals.batches, removals.threaded) == (1, 0)
    holder = os.open(spool.directory / "lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    waiting = asyncio.create_task(removals(ids[2]))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert removals.threaded == 1
    os.close(holder)  # the other process is done
    await asyncio.wait_for(waiting, 5)
    assert spool.list() == []
