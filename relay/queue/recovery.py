"""Reading the spool back: once at start (`recover`), and envelopes by id (`read_envelopes`).

At start the spool is read once (`Spool.scan`, in a thread, while intake already listens). DSN
steps a crash interrupted are finished first, so a DSN written just before a crash is never
delivered before the message it reports on is marked (else it would be queued again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

import structlog

from relay.errors import SpoolError, UnknownMessage
from relay.queue.bouncer import Bouncer
from relay.queue.spool import QueuedMessage, ScanEntry, Spool

log = structlog.get_logger(__name__)


def read_envelopes(
    spool: Spool, ids: list[str], with_data: Collection[str] = ()
) -> list[tuple[QueuedMessage, bytes | None]]:
    """The envelopes of `ids` still in the queue (blocking), with the message bytes for those
    in `with_data`; damaged ones are logged and left out."""
    found: list[tuple[QueuedMessage, bytes | None]] = []
    for queue_id in ids:
        try:
            if queue_id in with_data:
                found.append(spool.read_message(queue_id))
            else:
                found.append((spool.get(queue_id), None))
        except UnknownMessage:
            pass  # finished or deleted meanwhile
        except SpoolError as exc:
            log.error("queue.damaged_message", queue_id=queue_id, error=str(exc))
    return found


async def recover(spool: Spool, bouncer: Bouncer) -> list[ScanEntry]:
    """Every message in the spool, after the DSN steps a crash interrupted are finished."""
    started = time.monotonic()
    try:
        entries = await asyncio.to_thread(lambda: list(spool.scan()))
    except OSError as exc:
        log.error("queue.load_failed", error=str(exc))
        entries = []
    unfinished = [e.id for e in entries if e.failed and not e.held]
    for message, _ in await asyncio.to_thread(read_envelopes, spool, unfinished):
        try:
            await bouncer.bounce(message, None)
        except Exception as exc:
            log.error("queue.bounce_failed", queue_id=message.id, error=str(exc))
    log.info(
        "queue.loaded",
        messages=len(entries),
        held=sum(e.held for e in entries),
        seconds=round(time.monotonic() - started, 3),
    )
    return entries
