"""Durable writes for the spool: fsync of a batch of files at once, and of a directory."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# A batch's files are synced so that the file system commits its journal once for all of them.
# Measured on this project's ext4 VM: 10 new 5 KB files took 40 ms synced one after another,
# 1.4 ms synced at once from threads (20 files: 102 ms vs 3.6 ms). On Linux the writeback of
# every file is started first (sync_file_range(2), SYNC_FILE_RANGE_WRITE: a hint, no
# durability), then each is fsync'd in turn: the first fsync commits the journal holding all
# their inodes and the rest find theirs committed, as fast as the threads (0.66-0.81 vs 0.64-0.80
# ms for 5 files) without a hand-off to a thread per file (CPU per file 43-55 vs 105-127 us).
_FSYNC_THREADS = 8
_fsync_pool: ThreadPoolExecutor | None = None
_fsync_pool_lock = threading.Lock()
_SYNC_FILE_RANGE_WRITE = 2


def _writeback_starter() -> Callable[[int], object] | None:
    """sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) from the C library, or None (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return lambda fd: call(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


_start_writeback = _writeback_starter()


def _fsync_one(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as exc:
        return exc
    return None


def fsync_together(fds: Sequence[int]) -> list[OSError | None]:
    """`os.fsync` each descriptor with one journal commit for all; per descriptor its error."""
    if len(fds) > 1 and _start_writeback is not None:
        for fd in fds:
            _start_writeback(fd)  # a failure shows in the fsync below
    if len(fds) <= 1 or _start_writeback is not None:
        return [_fsync_one(fd) for fd in fds]
    return _fsync_in_threads(fds)


def _fsync_in_threads(fds: Sequence[int]) -> list[OSError | None]:
    """Elsewhere: all at once from a few threads, the calling one syncing the first."""
    global _fsync_pool
    with _fsync_pool_lock:
        if _fsync_pool is None:
            _fsync_pool = ThreadPoolExecutor(_FSYNC_THREADS, thread_name_prefix="fsync")
        pool = _fsync_pool
    others = [pool.submit(_fsync_one, fd) for fd in fds[1:]]
    first = _fsync_one(fds[0])
    return [first, *(future.result() for future in others)]


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
