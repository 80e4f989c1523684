"""`stsguard queue` talking to a running relay: a Unix socket at ``state_dir/control.sock``.

The relay keeps its queue in memory and never rescans the spool, so a command that changes the
queue must tell it. The command connects to the socket, sends one JSON line, reads one JSON line
back. When nothing listens (no relay runs on this state_dir) the command changes the spool itself
with the same functions (`apply`), and the relay reads the change when it starts.

Requests: ``{"op": "flush"}`` (everything), ``{"op": "flush", "ids": [...]}``,
``{"op": "flush", "domain": D}`` (the messages pending there, and its destination revived);
``{"op": "delete" | "hold" | "release", "ids": [...]}``; ``{"op": "delete", "domain": D}``,
``{"op": "delete", "recipient": R}``, ``{"op": "delete", "sender": S}`` (whole messages from S),
``{"op": "delete", "all": true}``; ``{"op": "queued", "ids": [...]}`` (messages another process,
e.g. ``stsguard tlsrpt send``, just put in the spool: delivered now). Replies: ``{"ok": true,
"messages": N, "recipients": N, "unknown": [...], "removed": N}`` (``removed``: messages that
left the queue) or ``{"ok": false, "error": "..."}``. The
socket is created with mode 0600: only the relay's user (and root) may steer its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from relay.errors import SpoolError, UnknownMessage
from relay.queue import changes
from relay.queue.passes import domain_of
from relay.queue.runner import QueueRunner
from relay.queue.spool import QueuedMessage, RecipientState, Spool

log = structlog.get_logger(__name__)

SOCKET_NAME = "control.sock"
# A request line, at most: `queue delete -` may name every message of a large queue (about 19
# bytes an id), far past asyncio's 64 KiB default.
REQUEST_MAX = 32 * 1024 * 1024
OPS = ("flush", "delete", "hold", "release", "queued")
_EVENTS = {"delete": "queue.deleted", "hold": "queue.held", "release": "queue.released"}


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


@dataclass(slots=True)
class Change:
    """What a request changed: messages touched (deleted, held, released), recipients taken out,
    ids not in the queue, and the ids whose message left the queue or was held."""

    messages: int = 0
    recipients: int = 0
    unknown: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    deleted: list[QueuedMessage] = field(default_factory=list)  # messages a delete removed

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "messages": self.messages,
            "recipients": self.recipients,
            "unknown": self.unknown,
            "removed": len(self.gone),  # messages that left the queue (or were held)
        }


def _matching(message: QueuedMessage, request: dict[str, Any]) -> list[str]:
    """The pending recipients of `message` a delete --domain/--recipient names."""
    if message.not_understood:
        return []  # this stsguard cannot rewrite it (see `relay.queue.envelope`)
    domain = str(request.get("domain") or "").lower().rstrip(".")
    recipient = str(request.get("recipient") or "").lower()
    return [
        r.address
        for r in message.pending
        if (domain and domain_of(r.address) == domain)
        or (recipient and r.address.lower() == recipient)
    ]


def flush_targets(spool: Spool, request: dict[str, Any]) -> tuple[list[str], list[str]]:
    """`flush ID...` / `flush --domain D`: the ids of messages to make due (not held, something
    pending, at D with --domain), and the given ids that name no queued message."""
    domain = str(request.get("domain") or "").lower().rstrip(".")
    if domain:
        return [
            m.id
            for m in spool.list()
            if not m.held and any(domain_of(r.address) == domain for r in m.pending)
        ], []
    found, unknown = [], []
    for queue_id in request["ids"]:
        try:
            message = spool.get(queue_id)
        except UnknownMessage:
            unknown.append(queue_id)
            continue
        if message.pending and not message.held:
            found.append(queue_id)
    return found, unknown


def _selected_ids(spool: Spool, request: dict[str, Any]) -> list[str]:
    if request.get("op") == "delete" and request.get("all"):
        return [m.id for m in spool.list()]
    if request.get("op") == "delete" and request.get("sender"):
        sender = str(request["sender"]).lower()
        return [m.id for m in spool.list() if m.mail_from.lower() == sender]
    return list(request["ids"])


def apply(spool: Spool, request: dict[str, Any], *, now: float) -> Change:
    """Carry out a flush of some messages, a delete, hold or release on the spool (blocking:
    call it in a thread)."""
    op = request.get("op")
    change = Change()
    if op == "flush":
        due, change.unknown = flush_targets(spool, request)
        for queue_id in due:
            with contextlib.suppress(UnknownMessage):
                spool.update(queue_id, lambda m: changes.due_now(m, now))
                change.messages += 1
        return change
    if op == "delete" and (request.get("domain") or request.get("recipient")):
        for message in spool.list():
            rcpts = _matching(message, request)
            if not rcpts:
                continue
            with contextlib.suppress(UnknownMessage):
                updated = spool.delete_recipients(message.id, rcpts, now=now)
                change.recipients += len(rcpts)
                change.messages += 1
                if not (updated.pending or updated.failed):
                    change.gone.append(message.id)
                    change.deleted.append(updated)
        return change
    for queue_id in _selected_ids(spool, request):
        try:
            if op == "delete":
                message = spool.get(queue_id)
                spool.delete(queue_id)
                change.recipients += sum(
                    r.status is RecipientState.PENDING for r in message.recipients
                )
                change.gone.append(queue_id)
                change.deleted.append(message)
            elif op == "hold":
                spool.hold(queue_id, "held by stsguard queue hold", now=now)
                change.gone.append(queue_id)
            elif op == "release":
                spool.release(queue_id, now=now)
                change.released.append(queue_id)
            else:
                raise ValueError(f"unknown op {op!r}")
            change.messages += 1
        except UnknownMessage:
            change.unknown.append(queue_id)
    return change


def _log_removed(message: QueuedMessage, now: float) -> None:
    """Postfix's ``removed`` line (as ``postsuper -d`` logs it) for a message a delete took out of
    the queue."""
    log.info(
        "queue.removed",
        queue_id=message.id,
        nrcpt=len(message.recipients),
        delay=round(now - message.received_at, 3),
        by="stsguard queue delete",
    )


def check_request(request: Any) -> dict[str, Any]:
    """The request if it is well formed; ValueError naming what is wrong."""
    if not isinstance(request, dict) or request.get("op") not in OPS:
        raise ValueError(f"expected an object with op one of {', '.join(OPS)}")
    ids = request.get("ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("ids: expected a list of queue ids")
    request["ids"] = ids
    for key in ("domain", "recipient", "sender"):
        if not isinstance(request.get(key, ""), str):
            raise ValueError(f"{key}: expected a string")
    return request


class ControlServer:
    """The relay's end of the control socket: applies requests to the spool and the runner."""

    def __init__(
        self, path: Path, spool: Spool, runner: QueueRunner, *, clock: Callable[[], float]
    ) -> None:
        self.path = path
        self.spool = spool
        self.runner = runner
        self.clock = clock
        self._server: asyncio.Server | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        # A socket file left by a relay that was killed; the intake's bind already proved that
        # no other relay runs here.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=REQUEST_MAX
            )
        except OSError as exc:
            # E.g. a state_dir path longer than a socket address holds (about 100 bytes): the
            # relay runs, but `stsguard queue` cannot reach it and works on the spool alone.
            log.error("queue.control_socket_failed", path=str(self.path), error=str(exc))
        finally:
            os.umask(old)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(30):
                try:
                    line = await reader.readline()
                    reply = await self.handle(check_request(json.loads(line)))
                except (ValueError, KeyError) as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                except SpoolError as exc:
                    reply = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "queued":
            for queue_id in request["ids"]:
                self.runner.wake(queue_id)
            log.info("queue.told", ids=request["ids"][:20], messages=len(request["ids"]))
            return {"ok": True, "messages": len(request["ids"]), "recipients": 0, "unknown": []}
        if op == "flush" and (request["ids"] or request.get("domain")):
            due, unknown = await asyncio.to_thread(flush_targets, self.spool, request)
            domain = str(request.get("domain") or "").lower().rstrip(".")
            count = self.runner.flush_some(due, domain)
            log.info(
                "queue.flushed",
                messages=count,
                domain=domain or None,
                ids=request["ids"][:20] or None,
                unknown=unknown or None,
                by="stsguard queue flush",
            )
            return {"ok": True, "messages": count, "recipients": 0, "unknown": unknown}
        if op == "flush":
            # Also what another program put in the spool without telling the relay.
            entries = await asyncio.to_thread(lambda: list(self.spool.scan()))
            found = self.runner.adopt(entries)
            count = self.runner.flush()
            log.info("queue.flushed", messages=count, found=found, by="stsguard queue flush")
            return {"ok": True, "messages": count, "recipients": 0, "unknown": []}
        async with self._lock:
            change = await asyncio.to_thread(apply, self.spool, request, now=self.clock())
        self.runner.forget(change.gone, held=op == "hold")
        for queue_id in change.released:
            self.runner.schedule(queue_id)
        selector = {
            k: request[k] for k in ("domain", "recipient", "sender", "all") if request.get(k)
        }
        for message in change.deleted:
            _log_removed(message, self.clock())
        log.info(
            _EVENTS[op],
            ids=request["ids"][:20] or None,
            **selector,
            messages=change.messages,
            recipients=change.recipients,
            unknown=change.unknown or None,
            by=f"stsguard queue {op}",
        )
        return change.as_json()


def tell_queued(state_dir: Path, ids: list[str]) -> bool:
    """Tell the relay running on `state_dir` that this process queued `ids`, so it delivers them
    now (it never rescans the spool). False when no relay listens (it reads them at start)."""
    if not ids:
        return False
    try:
        reply = ask(socket_path(state_dir), {"op": "queued", "ids": ids}, timeout=10)
    except (OSError, ValueError):
        return False
    return bool(reply and reply.get("ok"))


def ask(path: Path, request: dict[str, Any], *, timeout: float = 60) -> dict[str, Any] | None:
    """Send `request` to the relay listening at `path`; None when no relay listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        sock.sendall(json.dumps(request).encode() + b"\n")
        with sock.makefile("rb") as f:
            line = f.readline()
    reply: dict[str, Any] = json.loads(line) if line else {"ok": False, "error": "no reply"}
    return reply
