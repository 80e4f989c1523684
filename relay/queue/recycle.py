"""Message files kept for reuse: a delivered message's file is renamed into ``queue/free/`` and
emptied, and the next message written takes it back instead of creating a file.

Creating a file allocates an inode. On ext4 without a journal the allocator passes over every
inode freed in the last minute or more (``recently_deleted``), so under a steady stream of mail
each new file paid for a scan of the last minute's deletions: 16% of an intake process's CPU at
500 messages a second on the benchmark machine, growing with the rate. A renamed file keeps its
inode: no allocation, no free.

At most `SLOTS` files wait in ``free/`` (a removal into a taken slot replaces that file, which is
then freed as before). A writer takes one by renaming it to its temp file, so two processes never
get the same file. Nothing in ``free/`` is mail: files are emptied when they arrive, and whatever
a crash left there is removed when a spool is opened.

A crash can also leave a reused file under its old name: the finished message's rename away
from ``msg/`` was not yet on disk while the next message's bytes were. That message was not
accepted (its 250 comes after ``msg/`` is synced), and the old one was delivered; the start-up
scan removes such a file, and a message whose state file survived too is never given that
file's body (`names`: the read fails as damaged).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable

SLOTS = 256
RESCAN = 0.05  # seconds between two looks into an empty ``free/``


class FreeFiles:
    """The ``free/`` directory of one spool, as one process sees it."""

    def __init__(self, directory: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.clock = clock
        self._slot = 0
        self._names: list[str] = []
        self._looked = float("-inf")
        self.taken = 0  # files reused (for tests and the benchmark)

    def keep(self, path: str) -> None:
        """Move the file at `path` (a finished message) into the next slot and empty it.
        `FileNotFoundError` when there is no such file."""
        name = str(self._slot)
        self._slot = (self._slot + 1) % SLOTS
        slot = f"{self.directory}/{name}"
        os.rename(path, slot)
        with contextlib.suppress(FileNotFoundError):  # a writer took it already
            os.truncate(slot, 0)
        if len(self._names) < SLOTS:
            self._names.append(name)  # this process's next message need not look for it

    def take(self, path: str) -> int | None:
        """A kept file renamed to `path` and opened for writing, empty; None when there is
        none (the caller creates the file)."""
        if not self._names:
            now = self.clock()
            if now - self._looked < RESCAN:
                return None
            self._looked = now
            try:
                self._names = os.listdir(self.directory)
            except OSError:
                return None
        while self._names:
            name = self._names.pop()
            try:
                os.rename(f"{self.directory}/{name}", path)
            except FileNotFoundError:
                continue  # taken by another writer, or replaced
            except OSError:
                return None
            try:
                fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                return None
            self.taken += 1
            return fd
        return None

    def clear(self) -> int:
        """Remove every kept file (crash recovery, under the spool's exclusive lock)."""
        removed = 0
        for name in os.listdir(self.directory):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.directory}/{name}")
                removed += 1
        self._names = []
        return removed


def names(first_line: bytes, queue_id: str) -> bool:
    """True when a message file's first line (its envelope) is that of `queue_id`. A reused file
    caught by a crash under a finished message's name holds another message: its body must
    never go out as this one's (a state file may stand in for the first line)."""
    if b'"id": "' + queue_id.encode() + b'"' in first_line:
        return True  # how `encode_envelope` writes it; anything else is decoded
    try:
        return bool(json.loads(first_line).get("id") == queue_id)
    except (ValueError, AttributeError):
        return False
