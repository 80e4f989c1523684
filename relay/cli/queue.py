"""`stsguard queue list | summary | show ID [--body] | flush | hold ID... | release ID... |
delete ...`: see and steer the queue of a relay. ``-`` as the only ID reads the ids from stdin
(whitespace-separated), like Postfix's ``postsuper -d -``.

`list`, `summary` and `show` read the spool directory (``[relay].state_dir/queue``). The commands
that change the queue tell a running relay through its control socket (``state_dir/control.sock``,
`relay.queue.control`), which does the change and logs it; with no relay running they change the
spool themselves (`flush` then says that nothing will be sent until a relay starts). Exit status: 0
done, 1 a problem (an unknown id, no relay for `flush`), 2 a usage error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from relay.cli.queue_shape import queue_shape, shape_json, shape_lines
from relay.config import Config
from relay.errors import SpoolError, UnknownMessage, UsageError
from relay.queue.bounce import original_headers
from relay.queue.control import apply, ask, socket_path
from relay.queue.spool import QueuedMessage, Spool

ACTIONS = ("list", "summary", "show", "flush", "hold", "release", "delete")
_READING = ("list", "summary", "show")
_DELETE_SELECTORS = "--domain, --recipient, --sender and --all"
# Ids per control request: 17 bytes each as JSON, well inside the relay's 64 KiB request line.
IDS_PER_REQUEST = 1000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=ACTIONS,
        help="list: every message; summary: counts by domain and age (qshape); show ID: one "
        "message (postcat); flush [ID...]: try now; hold / release ID...: set aside, let go; "
        "delete: drop",
    )
    p.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        help="queue ids (show, flush, hold, release, delete); - reads them from stdin",
    )
    p.add_argument("--json", action="store_true", help="print JSON (list, summary, show)")
    p.add_argument(
        "--body", action="store_true", help="show: the whole message, header and body (postcat)"
    )
    p.add_argument(
        "--by-sender",
        action="store_true",
        help="summary: rows per sender domain, not per destination (qshape -s)",
    )
    p.add_argument(
        "--domain",
        help="delete: the pending recipients at this domain; flush: the messages pending there "
        "(and try the domain again at once)",
    )
    p.add_argument("--recipient", help="delete: this pending recipient")
    p.add_argument("--sender", help="delete: every message from this envelope sender")
    p.add_argument("--all", action="store_true", help="delete: every message")


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
        "held": message.held,
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
        f"{'  HELD: ' + message.held if message.held else ''}"
    ]
    for r in message.recipients:
        line = f"    {r.status.value:<9} <{r.address}>  attempts={r.attempts}"
        if r.status.value == "pending":
            line += f"  next={_iso(r.next_attempt_at)}"
        if r.last_error and r.status.value != "delivered":  # delivered: an old error is moot
            line += f"  ({r.last_error})"
        lines.append(line)
    return lines


def show_text(message: QueuedMessage, data: bytes) -> list[str]:
    """`queue show`: envelope, recipients, history and the header section."""
    lines = [
        f"id:          {message.id}",
        f"from:        <{message.mail_from}>",
        f"received:    {_iso(message.received_at)} from {message.client or '-'}",
        f"size:        {message.size}",
        f"flags:       {', '.join(_flags(message)) or '-'}",
    ]
    if message.held:
        lines.append(f"held:        {message.held}")
    lines.append("recipients:")
    lines += message_text(message)[1:]
    lines.append("history:")
    lines += [
        f"    {_iso(a.at)}  {a.domain or '-':<20} {a.outcome:<10} {a.reason}"
        for a in message.history
    ] or ["    (no attempt yet)"]
    lines.append("headers:")
    lines += ["    " + line for line in original_headers(data).rstrip("\r\n").split("\r\n")]
    return lines


def _flush_request(args: argparse.Namespace) -> dict[str, Any]:
    if args.recipient or args.all or args.sender:
        raise UsageError("queue flush: --recipient, --sender and --all are for delete")
    if args.ids and args.domain:
        raise UsageError("queue flush: give queue ids or --domain D, not both")
    request: dict[str, Any] = {"op": "flush", "ids": args.ids}
    if args.domain:
        request["domain"] = args.domain
    return request


def _delete_request(args: argparse.Namespace) -> dict[str, Any]:
    selectors = {"domain": args.domain, "recipient": args.recipient, "sender": args.sender}
    if sum(map(bool, [*selectors.values(), args.all, args.ids])) != 1:
        raise UsageError(
            "queue delete: give queue ids, or one of --domain D, --recipient R, --sender S, --all"
        )
    request: dict[str, Any] = {"op": "delete", "ids": args.ids}
    request.update({key: value for key, value in selectors.items() if value})
    if args.all:
        request["all"] = True
    return request


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """The control request for a changing action, after checking its arguments."""
    action: str = args.action
    if action == "flush":
        return _flush_request(args)
    if action == "delete":
        return _delete_request(args)
    if args.domain or args.recipient or args.sender or args.all:
        raise UsageError(
            f"queue {action}: --domain, --recipient, --sender and --all are for delete"
        )
    if not args.ids:
        raise UsageError(f"queue {action}: give the queue id of at least one message")
    return {"op": action, "ids": args.ids}


def _ids_from_stdin(args: argparse.Namespace) -> None:
    """``queue delete -``: the ids come from stdin, as `postsuper -d -` reads them."""
    if args.ids == ["-"]:
        args.ids = sys.stdin.read().split()
        if not args.ids:
            raise UsageError(f"queue {args.action}: no queue id on stdin")
    elif "-" in args.ids:
        raise UsageError(f"queue {args.action}: - (ids from stdin) must be the only id")


def _check_reading(args: argparse.Namespace) -> None:
    action: str = args.action
    if args.domain or args.recipient or args.sender or args.all:
        raise UsageError(
            f"queue {action}: --domain, --recipient, --sender and --all are for delete"
        )
    if args.body and action != "show":
        raise UsageError(f"queue {action}: --body is for show")
    if args.by_sender and action != "summary":
        raise UsageError(f"queue {action}: --by-sender is for summary")
    if action in ("list", "summary") and args.ids:
        raise UsageError(f"queue {action}: takes no queue id")
    if action == "show" and len(args.ids) != 1:
        raise UsageError("queue show: give the queue id of one message")


def _show(spool: Spool | None, queue_id: str, *, as_json: bool, body: bool) -> int:
    try:
        if spool is None:
            raise UnknownMessage(f"no queued message {queue_id!r}")
        message, data = spool.read_message(queue_id)
    except UnknownMessage as exc:
        print(f"stsguard: {exc}", file=sys.stderr)
        return 1
    if as_json:
        shown = message_json(message)
        shown["history"] = [
            {"at": _iso(a.at), "domain": a.domain, "outcome": a.outcome, "reason": a.reason}
            for a in message.history
        ]
        shown["headers"] = original_headers(data)
        if body:
            shown["message"] = data.decode("utf-8", "replace")
        print(json.dumps(shown, indent=2))
    elif body:
        print("\n".join(show_text(message, data)[:-1]))  # all but the header lines
        print("*** message (header and body) ***")
        sys.stdout.write(data.decode("utf-8", "replace").replace("\r\n", "\n"))
    else:
        print("\n".join(show_text(message, data)))
    return 0


def _read(args: argparse.Namespace, spool: Spool | None) -> int:
    """`list`, `summary`, `show`: read the spool, change nothing."""
    messages = spool.list() if spool and args.action != "show" else []
    if args.action == "show":
        return _show(spool, args.ids[0], as_json=args.json, body=args.body)
    if args.action == "summary":
        shape = queue_shape(messages, time.time(), by_sender=args.by_sender)
        if args.json:
            print(json.dumps(shape_json(shape), indent=2))
        else:
            print("\n".join(shape_lines(shape)))
    elif args.json:
        print(json.dumps([message_json(m) for m in messages], indent=2))
    elif not messages:
        print("queue is empty")
    else:
        for message in messages:
            print("\n".join(message_text(message)))
        print(f"{len(messages)} message(s)")
    return 0


def _open_spool(directory: Path) -> Spool:
    """The spool; opening it recovers from a crash, which writes: a user who may only read
    gets the one-line permission error naming the file, not the spool's wrapped one."""
    try:
        return Spool(directory)
    except SpoolError as exc:
        if isinstance(exc.__cause__, PermissionError):
            raise exc.__cause__ from None
        raise


def run(args: argparse.Namespace, config: Config) -> int:
    directory = config.relay.state_dir / "queue"
    _ids_from_stdin(args)
    if args.action in _READING:
        _check_reading(args)
    else:
        if args.body or args.by_sender:
            raise UsageError(f"queue {args.action}: --body and --by-sender are for show, summary")
        request = _request(args)
    # Reading an absent queue must not create one.
    spool = _open_spool(directory) if directory.is_dir() else None
    if args.action in _READING:
        return _read(args, spool)
    control = socket_path(config.relay.state_dir)
    try:
        reply = _ask_in_chunks(control, request)
    except PermissionError as exc:  # connect() names no path: say which socket refused
        raise PermissionError(exc.errno, exc.strerror, str(control)) from None
    if reply is None:
        return _without_relay(spool, request)
    if not reply.get("ok"):
        print(f"stsguard: the relay refused: {reply.get('error')}", file=sys.stderr)
        return 1
    return _report(request, reply, "the running relay")


def _ask_in_chunks(control: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """`ask`, with a long id list (`queue delete -` fed a whole queue) sent `IDS_PER_REQUEST` at
    a time, so each request line stays within what the relay reads; the replies added up."""
    ids: list[str] = request.get("ids") or []
    parts = [ids[i : i + IDS_PER_REQUEST] for i in range(0, len(ids), IDS_PER_REQUEST)]
    total: dict[str, Any] | None = None
    for part in parts or [ids]:
        reply = ask(control, {**request, "ids": part})
        if reply is None or not reply.get("ok"):
            return reply if total is None else {"ok": False, "error": _stopped(total, reply)}
        total = reply if total is None else _added(total, reply)
    return total


def _added(total: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
    summed = dict(total)
    for key, value in reply.items():
        if isinstance(value, bool) or key not in total:
            continue
        if isinstance(value, (int, list)):
            summed[key] = total[key] + value
    return summed


def _stopped(total: dict[str, Any], reply: dict[str, Any] | None) -> str:
    why = "the relay went away" if reply is None else reply.get("error")
    return f"{why} after {total.get('messages', 0)} message(s) were done"


def _without_relay(spool: Spool | None, request: dict[str, Any]) -> int:
    """No relay listens on the control socket: change the spool directly."""
    if request["op"] == "flush":
        if spool and (request["ids"] or request.get("domain")):
            touched = apply(spool, request, now=time.time()).messages
        else:
            touched = spool.flush() if spool else 0
        print(
            f"stsguard: no relay is running on this state directory; {touched} message(s) "
            "marked due, they go out when the relay starts",
            file=sys.stderr,
        )
        return 1
    if spool is None:
        change = {"ok": True, "messages": 0, "recipients": 0, "unknown": list(request["ids"])}
    else:
        change = apply(spool, request, now=time.time()).as_json()
    return _report(request, change, "the spool (no relay is running)")


def _report(request: dict[str, Any], reply: dict[str, Any], where: str) -> int:
    op = request["op"]
    done = {"flush": "flushed", "delete": "deleted", "hold": "held", "release": "released"}[op]
    line = f"{done}: {reply.get('messages', 0)} message(s)"
    if op == "delete" and (request.get("domain") or request.get("recipient")):
        # Recipients are taken out; a message leaves the queue only when none is left pending.
        messages, removed = reply.get("messages", 0), reply.get("removed", 0)
        line = f"deleted: {reply.get('recipients', 0)} recipient(s) in {messages} message(s)"
        line += f"; {removed} message(s) left the queue"
        if messages > removed:
            line += f", {messages - removed} still queued for their other recipients"
    print(f"{line} ({where})")
    unknown = reply.get("unknown") or []
    for queue_id in unknown:
        print(f"stsguard: no queued message {queue_id!r}", file=sys.stderr)
    return 1 if unknown else 0
