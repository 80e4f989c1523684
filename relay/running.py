"""Whether a relay is running on a state directory: it holds a shared lock on
``state_dir/relay.lock`` while it runs (the kernel drops it when the process ends, however it
ends). Commands that leave work for the relay (`stsguard tlsrpt send` queueing report mail) ask."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "relay.lock"


class RunningMarker:
    """The lock a running relay holds; `close()` gives it back."""

    def __init__(self, state_dir: Path) -> None:
        # 0644: an administrator in the relay's group may ask too (`stsguard check`); it holds
        # nothing but the lock.
        self._fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
        # Shared: relays never exclude each other here; only the question below is exclusive.
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def relay_running(state_dir: Path) -> bool:
    """True when a relay holds the marker of `state_dir`; PermissionError when this user may not
    look (the caller says so in one line)."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return False  # never created: no relay ever ran here
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our lock too
    return False
