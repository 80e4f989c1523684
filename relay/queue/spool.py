"""The durable queue: one file per message under ``state_dir/queue``.

Layout::

    queue/msg/<id>          the envelope as one JSON line, then the message bytes as received
                            (CRLF line ends, dot-unstuffed); written once
    queue/state/<id>.json   the envelope after a delivery attempt changed it (a deferral, some
                            recipients done); when present it supersedes the first line of msg/<id>
    queue/tmp/              files being written; anything left here after a crash is removed

Why files and not SQLite: message bodies are written once and read once, may be large, and the
relay, ``stsguard queue`` and an administrator's ``ls`` all see the same state without a schema.
Why one file per message: creating and syncing files is most of a queue's disk cost, so a message
costs one file and one ``fsync`` (the earlier layout, ``data/`` plus ``env/``, cost two of each; a
queue in that layout is converted when a `Spool` opens it).

Every write is crash-safe the same way: write a temp file, ``fsync`` it, ``rename`` it into place
(atomic on POSIX), ``fsync`` the directory. `commit` does this for a batch of messages with one
directory ``fsync`` for all of them (group commit: concurrent sessions share it); the rename into
``msg/`` is the commit point, and nothing is acknowledged before the directory ``fsync``. Removing
a finished message unlinks ``msg/<id>`` first, then its state file, without an ``fsync``: a crash
just after may bring the message back and deliver it again, never lose it (Postfix makes the same
trade). A state file without its message is removed when a `Spool` opens the directory.

Envelope updates are read-modify-write under an ``flock`` on ``queue/lock``, so the relay and a
``stsguard queue flush`` in another process never lose each other's changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import structlog

from relay.errors import SpoolError, UnknownMessage
from relay.queue.envelope import (
    HISTORY_MAX,
    REPORT_MAIL_FLAGS,
    Attempt,
    EnvelopeNotUnderstood,
    MessageFlags,
    QueuedMessage,
    RcptStatus,
    Recipient,
    ScanEntry,
    check_writable,
    dsn_flags,
    encode_envelope,
    new_queue_id,
    not_understood,
    valid_queue_id,
)
from relay.queue.files import SpoolFiles, fsync_dir

__all__ = [
    "HISTORY_MAX",
    "REPORT_MAIL_FLAGS",
    "Attempt",
    "EnvelopeNotUnderstood",
    "MessageFlags",
    "QueuedMessage",
    "RcptStatus",
    "Recipient",
    "ScanEntry",
    "Spool",
    "new_queue_id",
    "valid_queue_id",
]

_log = structlog.get_logger("relay.queue.spool")


def log_not_understood(queue_id: str, needs: Sequence[str]) -> None:
    """The one line for a message this stsguard must not deliver (see `relay.queue.envelope`)."""
    _log.error(
        "queue.envelope_not_understood",
        queue_id=queue_id,
        must_understand=list(needs),
        action="held, not delivered or changed, until a stsguard that knows these runs",
    )


# `Spool.list` shadows the builtin inside the class body.
_Messages = list[QueuedMessage]
_Errors = list[SpoolError | None]  # per item of a batch: None when done
_StateKey = tuple[int, int, int] | None  # a state file's (inode, mtime_ns, size); None: no file

# `Spool.list` reads every envelope afresh this often even when no state file changed.
RELIST_SECONDS = 60.0


class Spool(SpoolFiles):
    """The queue directory. Methods are blocking (fsync): call them via `asyncio.to_thread` from
    the event loop. Safe to use from several threads and processes at once."""

    def __init__(self, directory: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(directory, clock=clock)
        # `list`'s memory of envelopes: id -> (state file key when read, envelope)
        self._seen: dict[str, tuple[_StateKey, QueuedMessage]] = {}
        self._seen_lock = threading.Lock()
        self._seen_since = time.monotonic()

    def new_message(
        self,
        mail_from: str,
        rcpts: Collection[str],
        size: int,
        *,
        flags: MessageFlags | None = None,
        client: str = "",
        queue_id: str | None = None,
    ) -> QueuedMessage:
        """The envelope of a message about to be queued (nothing is written yet)."""
        if not rcpts:
            raise SpoolError("a message needs at least one recipient")
        queue_id = queue_id or new_queue_id()
        if not valid_queue_id(queue_id):
            raise SpoolError(f"not a queue id: {queue_id!r}")
        now = self.clock()
        return QueuedMessage(
            id=queue_id,
            mail_from=mail_from,
            recipients=tuple(Recipient(a, next_attempt_at=now) for a in rcpts),
            received_at=now,
            size=size,
            flags=flags or MessageFlags(),
            client=client,
        )

    def put(
        self,
        mail_from: str,
        rcpts: Collection[str],
        data: bytes,
        *,
        flags: MessageFlags | None = None,
        client: str = "",
        queue_id: str | None = None,
    ) -> str:
        """Queue a message; when this returns, the message survives a crash. Returns its id
        (`queue_id` when the caller made one with `new_queue_id`, e.g. for a trace header)."""
        message = self.new_message(
            mail_from, rcpts, len(data), flags=flags, client=client, queue_id=queue_id
        )
        (error,) = self.commit([(message, data)])
        if error is not None:
            raise error
        return message.id

    def commit(self, batch: Sequence[tuple[QueuedMessage, bytes]]) -> list[SpoolError | None]:
        """Queue several messages with one directory fsync (group commit). Returns, per message,
        None when it is durable or the error that kept it out of the queue."""
        results: list[SpoolError | None] = [None] * len(batch)
        written: list[tuple[int, Path, Path]] = []
        try:
            with self._locked(shared=True):
                for i, (message, data) in enumerate(batch):
                    target = self._msg / message.id
                    try:
                        tmp = self._write_temp(message.id, encode_envelope(message) + b"\n" + data)
                    except OSError as exc:
                        results[i] = SpoolError(f"{self.directory}: cannot queue a message: {exc}")
                    else:
                        written.append((i, tmp, target))
                for _, tmp, target in written:
                    os.rename(tmp, target)
                if written:
                    fsync_dir(self._msg)
        except OSError as exc:
            # A failed rename or directory fsync: none of the batch is known to be durable, and
            # its senders are told so; what did reach msg/ goes, or it would be delivered twice.
            error = SpoolError(f"{self.directory}: cannot queue a message: {exc}")
            for i, tmp, target in written:
                for path in (tmp, target):
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
                results[i] = error
            return [r or error for r in results]
        return results

    def get(self, queue_id: str) -> QueuedMessage:
        return self._read(queue_id)

    def read_message(self, queue_id: str) -> tuple[QueuedMessage, bytes]:
        """The envelope and the message bytes, from one open of the message file."""
        return self._load(queue_id, body=True)

    def read_data(self, queue_id: str) -> bytes:
        path = self._msg_path(queue_id)
        try:
            with path.open("rb") as f:
                f.readline()
                return f.read()
        except FileNotFoundError:
            raise UnknownMessage(f"no queued message {queue_id!r}") from None
        except OSError as exc:
            raise SpoolError(f"{path}: cannot read: {exc}") from exc

    def list(self) -> _Messages:
        """Every queued message, oldest first.

        A message file is written once, so an envelope read before is reused while the
        message's state file is unchanged (same inode, mtime and size): a scan of a large queue
        costs two directory listings, not a read per message. Everything is read afresh every
        `RELIST_SECONDS` all the same."""
        with self._seen_lock:
            if time.monotonic() - self._seen_since >= RELIST_SECONDS:
                self._seen, self._seen_since = {}, time.monotonic()
            states: dict[str, _StateKey] = {}
            with os.scandir(self._state) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        states[entry.name.removesuffix(".json")] = (
                            st.st_ino,
                            st.st_mtime_ns,
                            st.st_size,
                        )
            with os.scandir(self._msg) as entries:
                names = [entry.name for entry in entries]
            seen, self._seen = self._seen, {}
            messages = []
            for name in names:
                key = states.get(name)
                cached = seen.get(name)
                if cached is not None and cached[0] == key:
                    message = cached[1]
                else:
                    try:
                        message = self._read(name, state=key is not None)
                    except UnknownMessage:
                        continue  # finished between the listing and the read
                    except SpoolError as exc:
                        # One damaged file must not stop the queue; `get` still reports it.
                        _log.error(
                            "queue.spool_damaged_envelope",
                            file=str(self._msg / name),
                            error=str(exc),
                        )
                        continue
                self._seen[name] = (key, message)
                messages.append(message)
        return sorted(messages, key=lambda m: (m.received_at, m.id))

    def due(self, now: float) -> _Messages:
        """Messages with a pending recipient whose next attempt is at or before `now`."""
        return [m for m in self.list() if m.is_due(now)]

    def mark_delivered(self, queue_id: str, rcpts: Collection[str]) -> QueuedMessage:
        return self._update(queue_id, rcpts, status=RcptStatus.DELIVERED, error="", when=None)

    def mark_deferred(
        self, queue_id: str, rcpts: Collection[str], *, error: str, next_attempt_at: float
    ) -> QueuedMessage:
        return self._update(
            queue_id, rcpts, status=RcptStatus.PENDING, error=error, when=next_attempt_at
        )

    def mark_bounced(self, queue_id: str, rcpts: Collection[str], error: str) -> QueuedMessage:
        """Fail `rcpts` for good. Read the data (for the DSN) before this: a message with no
        pending recipient left is removed."""
        return self._update(queue_id, rcpts, status=RcptStatus.BOUNCED, error=error, when=None)

    def _update(
        self,
        queue_id: str,
        rcpts: Collection[str],
        *,
        status: RcptStatus,
        error: str,
        when: float | None,
    ) -> QueuedMessage:
        """Apply one outcome to the named pending recipients; returns the new state. A message
        left with no pending recipient is removed from the queue."""
        wanted = set(rcpts)
        with self._locked():
            message = self._read(queue_id)
            recipients = []
            for r in message.recipients:
                if r.address in wanted and r.status is RcptStatus.PENDING:
                    r = replace(
                        r,
                        status=status,
                        attempts=r.attempts + 1,
                        last_error=error or r.last_error,
                        next_attempt_at=r.next_attempt_at if when is None else when,
                    )
                recipients.append(r)
            updated = replace(message, recipients=tuple(recipients))
            try:
                if updated.pending:
                    self._write_state(updated)
                else:
                    self._remove(queue_id)
            except OSError as exc:
                raise SpoolError(f"{self.directory}: cannot update {queue_id}: {exc}") from exc
        return updated

    # --- the queue manager's steps ---------------------------------------------------------

    def record(
        self,
        queue_id: str,
        *,
        delivered: Collection[str] = (),
        deferred: Mapping[str, str] | None = None,
        failed: Mapping[str, str] | None = None,
        next_attempt_at: float = 0.0,
        history: Sequence[Attempt] = (),
    ) -> QueuedMessage:
        """One pass's outcomes in one durable write: `delivered` recipients done, `deferred`
        ones (with their reasons) due again at `next_attempt_at`, `failed` ones FAILED with a
        `dsn_id` for their DSN (`queue_dsn` queues it). Returns the new state; a message with
        nothing pending or failed left is removed."""
        deferred, failed = deferred or {}, failed or {}
        done = set(delivered)
        with self._locked():
            message = self._read(queue_id)
            recipients = []
            for r in message.recipients:
                if r.status is RcptStatus.PENDING:
                    if r.address in done:
                        r = replace(r, status=RcptStatus.DELIVERED, attempts=r.attempts + 1)
                    elif r.address in failed:
                        r = replace(
                            r,
                            status=RcptStatus.FAILED,
                            attempts=r.attempts + 1,
                            last_error=failed[r.address],
                        )
                    elif r.address in deferred:
                        r = replace(
                            r,
                            attempts=r.attempts + 1,
                            last_error=deferred[r.address] or r.last_error,
                            next_attempt_at=next_attempt_at,
                        )
                recipients.append(r)
            updated = replace(
                message,
                recipients=tuple(recipients),
                history=(*message.history, *history)[-HISTORY_MAX:],
            )
            if updated.failed and not updated.dsn_id:
                updated = replace(updated, dsn_id=new_queue_id())
            self._store(updated)
        return updated

    def _store(self, message: QueuedMessage) -> None:
        """Write the new state, or remove the message when nothing is left to do for it."""
        check_writable(message)
        try:
            if message.pending or message.failed:
                self._write_state(message)
            else:
                self._remove(message.id)
        except OSError as exc:
            raise SpoolError(f"{self.directory}: cannot update {message.id}: {exc}") from exc

    def queue_dsn(self, queue_id: str, dsn: bytes | None, *, now: float) -> QueuedMessage:
        """Queue the DSN of the FAILED recipients as message `dsn_id` (`dsn` None: nobody to
        tell), then mark them BOUNCED: each step durable, in this order. A crash between the two
        leaves `dsn_id` set and the DSN in ``msg/``; doing this again finds it there and only
        finishes the second step, so one failure never gives two DSNs (the DSN is not handed to
        delivery before this returns, and at start the relay finishes these steps before it
        delivers anything it read)."""
        with self._locked():
            message = self._read(queue_id)
            if not message.failed:
                return message
            if dsn is not None and message.dsn_id:
                target = self._msg / message.dsn_id
                if not target.exists():
                    bounce = replace(
                        self.new_message(
                            "",
                            [message.mail_from],
                            len(dsn),
                            flags=dsn_flags(message.flags),
                            queue_id=message.dsn_id,
                        ),
                        client="stsguard",
                    )
                    try:
                        self._write_durably(target, encode_envelope(bounce) + b"\n" + dsn)
                    except OSError as exc:
                        raise SpoolError(f"{self.directory}: cannot queue a DSN: {exc}") from exc
            failed = len(message.failed)
            updated = replace(
                message,
                recipients=tuple(
                    replace(r, status=RcptStatus.BOUNCED) if r.status is RcptStatus.FAILED else r
                    for r in message.recipients
                ),
                dsn_id="",
                history=(
                    *message.history,
                    Attempt(
                        now,
                        "",
                        "bounced",
                        f"{failed} recipient(s), DSN {message.dsn_id}"
                        if dsn is not None
                        else f"{failed} recipient(s), no DSN",
                    ),
                )[-HISTORY_MAX:],
            )
            self._store(updated)
        return updated

    def queue_warning(self, queue_id: str, dsn: bytes, *, now: float) -> str:
        """Mark the message warned ([delivery].delay_warning), then queue the "delayed" DSN;
        returns its id. In this order, so a crash between loses a warning, never doubles one."""
        with self._locked():
            message = self._read(queue_id)
            if message.warned:
                return ""
            warning_id = new_queue_id()
            warned = replace(
                message,
                warned=True,
                history=(*message.history, Attempt(now, "", "delay-warned", warning_id))[
                    -HISTORY_MAX:
                ],
            )
            bounce = self.new_message(
                "",
                [message.mail_from],
                len(dsn),
                flags=dsn_flags(message.flags),
                queue_id=warning_id,
            )
            try:
                self._write_state(warned)
                self._write_durably(self._msg / warning_id, encode_envelope(bounce) + b"\n" + dsn)
            except OSError as exc:
                raise SpoolError(f"{self.directory}: cannot queue a delay warning: {exc}") from exc
        return warning_id

    def hold(self, queue_id: str, reason: str, *, now: float) -> QueuedMessage:
        """Set a message aside: not delivered (nor retried) until `release`. Survives restarts."""
        with self._locked():
            message = self._read(queue_id)
            updated = replace(
                message,
                held=reason or "held",
                history=(*message.history, Attempt(now, "", "held", reason))[-HISTORY_MAX:],
            )
            self._store(updated)
        return updated

    def release(self, queue_id: str, *, now: float) -> QueuedMessage:
        """Undo `hold`: the message is due now."""
        with self._locked():
            message = self._read(queue_id)
            updated = replace(
                message,
                held="",
                recipients=tuple(
                    replace(r, next_attempt_at=now) if r.status is RcptStatus.PENDING else r
                    for r in message.recipients
                ),
                history=(*message.history, Attempt(now, "", "released"))[-HISTORY_MAX:],
            )
            self._store(updated)
        return updated

    def delete_recipients(
        self, queue_id: str, rcpts: Collection[str], *, now: float
    ) -> QueuedMessage:
        """Take pending recipients out (`stsguard queue delete --domain/--recipient`): they are
        never delivered; the message leaves the queue when nothing else is pending."""
        wanted = set(rcpts)
        with self._locked():
            message = self._read(queue_id)
            updated = replace(
                message,
                recipients=tuple(
                    replace(r, status=RcptStatus.DELETED)
                    if r.status is RcptStatus.PENDING and r.address in wanted
                    else r
                    for r in message.recipients
                ),
                history=(*message.history, Attempt(now, "", "deleted", ", ".join(sorted(wanted))))[
                    -HISTORY_MAX:
                ],
            )
            self._store(updated)
        return updated

    def scan(self) -> Iterator[ScanEntry]:
        """What the queue manager needs of every message at start, without building envelopes:
        one read of its state (or first line) each. Damaged ones are logged and skipped."""
        with os.scandir(self._state) as entries:
            states = {e.name.removesuffix(".json") for e in entries}
        with os.scandir(self._msg) as entries:
            names = [e.name for e in entries]
        for name in names:
            try:
                if name in states:
                    try:
                        header = (self._state / f"{name}.json").read_bytes()
                    except FileNotFoundError:
                        with (self._msg / name).open("rb") as f:
                            header = f.readline()
                else:
                    with (self._msg / name).open("rb") as f:
                        header = f.readline()
                raw = json.loads(header)
                pending = [
                    float(r["next_attempt_at"])
                    for r in raw["recipients"]
                    if r["status"] == RcptStatus.PENDING.value
                ]
                failed = any(r["status"] == RcptStatus.FAILED.value for r in raw["recipients"])
                needs = not_understood(raw)
                if needs:
                    log_not_understood(name, needs)
                yield ScanEntry(
                    name,
                    min(pending) if pending else None,
                    float(raw["received_at"]),
                    bool(raw.get("held", "")) or bool(needs),
                    failed,
                )
            except FileNotFoundError:
                continue  # finished between the listing and the read
            except (OSError, ValueError, KeyError, TypeError) as exc:
                _log.error("spool_damaged_envelope", file=str(self._msg / name), error=str(exc))

    def finish(self, queue_ids: Sequence[str]) -> _Errors:
        """Remove messages whose every pending recipient is done (the caller knows, having
        delivered them), without reading them first. One lock for the lot."""
        results: _Errors = []
        with self._locked():
            for queue_id in queue_ids:
                try:
                    self._remove(queue_id)
                    results.append(None)
                except (OSError, UnknownMessage) as exc:
                    results.append(SpoolError(f"{self.directory}: cannot remove {queue_id}: {exc}"))
        return results

    def delete(self, queue_id: str) -> None:
        """Remove a message whatever its state; `UnknownMessage` if there is none."""
        with self._locked():
            self._read(queue_id, state=False)
            try:
                self._remove(queue_id)
            except OSError as exc:
                raise SpoolError(f"{self.directory}: cannot delete {queue_id}: {exc}") from exc

    def flush(self) -> int:
        """Make every pending recipient due now; returns how many messages were touched."""
        now = self.clock()
        touched = 0
        with self._locked():
            for message in self.list():
                if not message.pending or message.is_due(now) or message.not_understood:
                    continue
                recipients = tuple(
                    replace(r, next_attempt_at=now) if r.status is RcptStatus.PENDING else r
                    for r in message.recipients
                )
                try:
                    self._write_state(replace(message, recipients=recipients))
                except OSError as exc:
                    raise SpoolError(f"{self.directory}: cannot flush {message.id}: {exc}") from exc
                touched += 1
        return touched
