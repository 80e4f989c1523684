"""systemd readiness (`Type=notify`): one datagram to `$NOTIFY_SOCKET`, no dependency.

READY=1 once the relay listens, STOPPING=1 when it begins to stop, RELOADING=1 on a reload.
Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    """Send ``FIELD=value`` lines to systemd; True when a socket took them."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address  # '@': abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(fields).encode(), target)
    except OSError:
        return False  # readiness is advisory; the relay runs on without it
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def stopping() -> bool:
    return notify("STOPPING=1")


def reloading() -> bool:
    """Call before re-reading the config, then `ready()` when done (systemd >= 253 wants the
    monotonic time with RELOADING=1)."""
    return notify(
        "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    )
