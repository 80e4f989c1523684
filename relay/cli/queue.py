"""`stsguard queue list [--json] | flush | delete ID`: see and steer the queue of a relay.

Works on the spool directory directly (``[relay].state_dir/queue``), so it needs no running relay;
a running relay notices a flush on its next poll of the spool.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import fields
from typing import Any

from relay.config import Config
from relay.errors import UnknownMessage, UsageError
from relay.queue.spool import QueuedMessage, Spool


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "flush", "delete"])
    p.add_argument("id", nargs="?", help="queue id (for delete)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def _flags(message: QueuedMessage) -> list[str]:
    return [f.name for f in fields(message.flags) if getattr(message.flags, f.name)]


def message_json(message: QueuedMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "mail_from": message.mail_from,
        "received_at": _iso(message.received_at),
        "size": message.size,
        "client": message.client,
        "flags": _flags(message),
        "recipients": [
            {
                "address": r.address,
                "status": r.status.value,
                "attempts": r.attempts,
                "next_attempt_at": _iso(r.next_attempt_at),
                "last_error": r.last_error,
            }
            for r in message.recipients
        ],
    }


def message_text(message: QueuedMessage) -> list[str]:
    flags = _flags(message)
    lines = [
        f"{message.id}  {_iso(message.received_at)}  {message.size:>9}  "
        f"<{message.mail_from}>{'  [' + ','.join(flags) + ']' if flags else ''}"
    ]
    for r in message.recipients:
        line = f"    {r.status.value:<9} <{r.address}>  attempts={r.attempts}"
        if r.status.value == "pending":
            line += f"  next={_iso(r.next_attempt_at)}"
        if r.last_error:
            line += f"  ({r.last_error})"
        lines.append(line)
    return lines


def run(args: argparse.Namespace, config: Config) -> int:
    directory = config.relay.state_dir / "queue"
    action: str = args.action
    queue_id: str | None = args.id
    if action == "delete" and not queue_id:
        raise UsageError("queue delete: give the queue id of the message to delete")
    if action != "delete" and queue_id:
        raise UsageError(f"queue {action}: takes no queue id")

    # Reading an absent queue must not create one.
    spool = Spool(directory) if directory.is_dir() else None
    if action == "list":
        messages = spool.list() if spool else []
        if args.json:
            print(json.dumps([message_json(m) for m in messages], indent=2))
        elif not messages:
            print("queue is empty")
        else:
            for message in messages:
                print("\n".join(message_text(message)))
            print(f"{len(messages)} message(s)")
    elif action == "flush":
        touched = spool.flush() if spool else 0
        print(f"flushed: {touched} message(s) due now")
    else:
        assert queue_id is not None
        if spool is None:
            raise UnknownMessage(f"no queued message {queue_id!r}")
        spool.delete(queue_id)
        print(f"deleted {queue_id}")
    return 0
