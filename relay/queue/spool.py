"""The durable queue: one file per message under ``state_dir/queue``.

Layout::

    queue/msg/<id>          the envelope as one JSON line, then the message bytes as received
                            (CRLF line ends, dot-unstuffed); written once
    queue/state/<id>.json   the envelope after a delivery attempt changed it (a deferral, some
                            recipients done); when present it supersedes the first line of msg/<id>
    queue/tmp/              files being written; anything left here after a crash is removed
    queue/free/             emptied files of delivered mail, reused for new mail
                            (`relay.queue.recycle`); removed when a spool is opened

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
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import structlog

from relay.errors import SpoolError, UnknownMessage
from relay.message_flags import REPORT_MAIL_FLAGS, MessageFlags, dsn_flags
from relay.queue import changes
from relay.queue.durable import fsync_dir
from relay.queue.envelope import (
    HISTORY_MAX,
    EnvelopeNotUnderstood,
    HistoryEntry,
    QueuedMessage,
    Recipient,
    RecipientState,
    ScanEntry,
    check_writable,
    encode_envelope,
    new_queue_id,
    valid_queue_id,
)
from relay.queue.files import SpoolFiles, log_not_understood

__all__ = [
    "HISTORY_MAX",
    "REPORT_MAIL_FLAGS",
    "EnvelopeNotUnderstood",
    "HistoryEntry",
    "MessageFlags",
    "QueuedMessage",
    "Recipient",
    "RecipientState",
    "ScanEntry",
    "Spool",
    "log_not_understood",
    "new_queue_id",
    "valid_queue_id",
]

_log = structlog.get_logger("relay.queue.spool")


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
        written: list[tuple[int, str, str]] = []
        try:
            with self._locked(shared=True):
                temps = self._write_temps(
                    [(m.id, encode_envelope(m) + b"\n" + data) for m, data in batch]
                )
                for i, ((message, _), tmp) in enumerate(zip(batch, temps, strict=True)):
                    if isinstance(tmp, OSError):
                        results[i] = SpoolError(f"{self.directory}: cannot queue a message: {tmp}")
                    else:
                        written.append((i, tmp, f"{self._msg_dir}/{message.id}"))
                for _, tmp, target in written:
                    os.rename(tmp, target)
                if written:
                    fsync_dir(self._msg_dir)
        except OSError as exc:
            # A failed rename or directory fsync: none of the batch is known to be durable, and
            # its senders are told so; what did reach msg/ goes, or it would be delivered twice.
            error = SpoolError(f"{self.directory}: cannot queue a message: {exc}")
            for i, tmp, target in written:
                for path in (tmp, target):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                results[i] = error
            return [r or error for r in results]
        return results

    def get(self, queue_id: str) -> QueuedMessage:
        return self._read(queue_id)

    def read_message(self, queue_id: str) -> tuple[QueuedMessage, bytes]:
        """The envelope and the message bytes, from one open of the message file."""
        return self._load(queue_id, body=True)

    def read_data(self, queue_id: str) -> bytes:
        """The message bytes without building the envelope."""
        return self._msg_contents(queue_id, body=True)[2]

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

    # --- changes: one read-modify-write path -------------------------------------------------

    def update(
        self, queue_id: str, change: Callable[[QueuedMessage], QueuedMessage]
    ) -> QueuedMessage:
        """The one way an envelope changes: read it under the queue's lock, apply `change`
        (a pure function, see `relay.queue.changes`), write the result durably, or remove the
        message when nothing is pending or failed. Returns the new state."""
        with self._locked():
            updated = change(self._read(queue_id))
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

    def record(
        self,
        queue_id: str,
        *,
        delivered: Collection[str] = (),
        deferred: Mapping[str, str] | None = None,
        failed: Mapping[str, str] | None = None,
        next_attempt_at: float = 0.0,
        history: Sequence[HistoryEntry] = (),
        started: float = 0.0,
    ) -> QueuedMessage:
        """One pass's outcomes in one durable write (`changes.record_pass`); failed recipients
        get a `dsn_id` for their DSN (`queue_dsn` queues it)."""
        return self.update(
            queue_id,
            lambda m: changes.record_pass(
                m,
                delivered=delivered,
                deferred=deferred,
                failed=failed,
                next_attempt_at=next_attempt_at,
                history=history,
                dsn_id=new_queue_id(),
                started=started,
            ),
        )

    def hold(self, queue_id: str, reason: str, *, now: float) -> QueuedMessage:
        """Set a message aside: not delivered (nor retried) until `release`. Survives restarts."""
        return self.update(queue_id, lambda m: changes.held(m, reason, now=now))

    def release(self, queue_id: str, *, now: float) -> QueuedMessage:
        """Undo `hold`: the message is due now."""
        return self.update(queue_id, lambda m: changes.released(m, now=now))

    def delete_recipients(
        self, queue_id: str, rcpts: Collection[str], *, now: float
    ) -> QueuedMessage:
        """Take pending recipients out (`stsguard queue delete --domain/--recipient`): they are
        never delivered; the message leaves the queue when nothing else is pending."""
        return self.update(queue_id, lambda m: changes.without_recipients(m, rcpts, now=now))

    # --- steps that also queue a new message (a DSN) -----------------------------------------

    def _bounce_message(
        self, message: QueuedMessage, queue_id: str, dsn: bytes, *, client: str = ""
    ) -> QueuedMessage:
        """The envelope of a DSN about `message`, to its sender."""
        return self.new_message(
            "",
            [message.mail_from],
            len(dsn),
            flags=dsn_flags(message.flags),
            client=client,
            queue_id=queue_id,
        )

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
                    bounce = self._bounce_message(message, message.dsn_id, dsn, client="stsguard")
                    try:
                        self._write_durably(target, encode_envelope(bounce) + b"\n" + dsn)
                    except OSError as exc:
                        raise SpoolError(f"{self.directory}: cannot queue a DSN: {exc}") from exc
            updated = changes.dsn_queued(message, sent=dsn is not None, now=now)
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
            self._store(changes.warned(message, warning_id, now=now))
            bounce = self._bounce_message(message, warning_id, dsn)
            try:
                self._write_durably(self._msg / warning_id, encode_envelope(bounce) + b"\n" + dsn)
            except OSError as exc:
                raise SpoolError(f"{self.directory}: cannot queue a delay warning: {exc}") from exc
        return warning_id

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
                self._store(changes.due_now(message, now))
                touched += 1
        return touched
