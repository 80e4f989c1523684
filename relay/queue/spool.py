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

import base64
import contextlib
import fcntl
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from relay.errors import SpoolError, UnknownMessage

_log = structlog.get_logger("relay.queue.spool")

_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


class RcptStatus(StrEnum):
    """PENDING: still to deliver. FAILED: failed for good, its DSN not yet queued (the next
    step queues it, see `Spool.queue_dsn`). BOUNCED: failed and reported (or nobody to report
    to). DELETED: taken out by `stsguard queue delete`."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    BOUNCED = "bounced"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient and where its delivery stands."""

    address: str
    status: RcptStatus = RcptStatus.PENDING
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class MessageFlags:
    """What the delivery must know about a message beyond its envelope.

    `tls_required_no`: the message carried ``TLS-Required: No`` (RFC 8689 section 5).
    `no_tlsrpt`: our own TLS-RPT report mail (RFC 8460 section 3: no MTA-STS, not counted).
    `is_bounce`: a DSN we generated (never bounced again). `smtputf8` / `eight_bit`: the client
    sent MAIL FROM with SMTPUTF8 / BODY=8BITMIME, so the next hop must offer the same.
    """

    tls_required_no: bool = False
    no_tlsrpt: bool = False
    is_bounce: bool = False
    smtputf8: bool = False
    eight_bit: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """One line of a message's history: a delivery attempt to one domain, or an event (held,
    released, bounced). `outcome` is a word (delivered, deferred, failed, held, ...)."""

    at: float
    domain: str
    outcome: str
    reason: str = ""


# A message's history keeps this many lines, the newest.
HISTORY_MAX = 20


# Our own TLS-RPT report mail: delivered without MTA-STS and not counted (RFC 8460 3, 5.3).
REPORT_MAIL_FLAGS = MessageFlags(tls_required_no=True, no_tlsrpt=True)


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message in the queue: its envelope and recipient states (the data is in `read_data`)."""

    id: str
    mail_from: str
    recipients: tuple[Recipient, ...]
    received_at: float
    size: int
    flags: MessageFlags = field(default_factory=MessageFlags)
    client: str = ""
    # Set aside (not delivered) until released; the reason, or "" when not held.
    held: str = ""
    # The queue id its DSN gets (or got): set with the first FAILED recipient, cleared once the
    # DSN is queued, so a crash between the two never queues a second DSN.
    dsn_id: str = ""
    # A "delayed" DSN ([delivery].delay_warning) went out.
    warned: bool = False
    history: tuple[Attempt, ...] = ()

    @property
    def pending(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if r.status is RcptStatus.PENDING)

    @property
    def failed(self) -> tuple[Recipient, ...]:
        """Failed for good, DSN not yet queued."""
        return tuple(r for r in self.recipients if r.status is RcptStatus.FAILED)

    @property
    def next_attempt_at(self) -> float | None:
        """When the earliest pending recipient is due; None when nothing is pending."""
        times = [r.next_attempt_at for r in self.pending]
        return min(times) if times else None

    def is_due(self, now: float) -> bool:
        due = self.next_attempt_at
        return due is not None and due <= now


@dataclass(frozen=True, slots=True)
class ScanEntry:
    """One message as `Spool.scan` sees it: when it is due (None: nothing pending), when it
    came, whether it is held and whether it has FAILED recipients whose DSN is not queued."""

    id: str
    due: float | None
    received_at: float
    held: bool
    failed: bool


# `Spool.list` shadows the builtin inside the class body.
_Messages = list[QueuedMessage]
_Errors = list[SpoolError | None]  # per item of a batch: None when done
_StateKey = tuple[int, int, int] | None  # a state file's (inode, mtime_ns, size); None: no file

# `Spool.list` reads every envelope afresh this often even when no state file changed.
RELIST_SECONDS = 60.0


def new_queue_id() -> str:
    """16 base32 characters (80 random bits): unique without coordination between processes."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii")


def valid_queue_id(text: str) -> bool:
    return len(text) == 16 and set(text) <= _ID_CHARS


_FLAG_NAMES = tuple(f.name for f in fields(MessageFlags))


def _encode(message: QueuedMessage) -> bytes:
    # By hand rather than `dataclasses.asdict`, which deep-copies and cost 3% of the relay's CPU.
    raw = {
        "id": message.id,
        "mail_from": message.mail_from,
        "recipients": [
            {
                "address": r.address,
                "status": r.status.value,
                "attempts": r.attempts,
                "next_attempt_at": r.next_attempt_at,
                "last_error": r.last_error,
            }
            for r in message.recipients
        ],
        "received_at": message.received_at,
        "size": message.size,
        "flags": {name: getattr(message.flags, name) for name in _FLAG_NAMES},
        "client": message.client,
        "held": message.held,
        "dsn_id": message.dsn_id,
        "warned": message.warned,
        "history": [[a.at, a.domain, a.outcome, a.reason] for a in message.history],
    }
    return json.dumps(raw, sort_keys=True).encode("utf-8")


def _decode(blob: bytes) -> QueuedMessage:
    raw: dict[str, Any] = json.loads(blob)
    return QueuedMessage(
        id=str(raw["id"]),
        mail_from=str(raw["mail_from"]),
        recipients=tuple(
            Recipient(
                address=str(r["address"]),
                status=RcptStatus(r["status"]),
                attempts=int(r["attempts"]),
                next_attempt_at=float(r["next_attempt_at"]),
                last_error=str(r["last_error"]),
            )
            for r in raw["recipients"]
        ),
        received_at=float(raw["received_at"]),
        size=int(raw["size"]),
        flags=MessageFlags(**{k: bool(v) for k, v in raw.get("flags", {}).items()}),
        client=str(raw.get("client", "")),
        held=str(raw.get("held", "")),
        dsn_id=str(raw.get("dsn_id", "")),
        warned=bool(raw.get("warned", False)),
        history=tuple(
            Attempt(float(a[0]), str(a[1]), str(a[2]), str(a[3])) for a in raw.get("history", ())
        ),
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The queue directory. Methods are blocking (fsync): call them via `asyncio.to_thread` from
    the event loop. Safe to use from several threads and processes at once."""

    def __init__(self, directory: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.clock = clock
        self._msg = self.directory / "msg"
        self._state = self.directory / "state"
        self._tmp = self.directory / "tmp"
        # `list`'s memory of envelopes: id -> (state file key when read, envelope)
        self._seen: dict[str, tuple[_StateKey, QueuedMessage]] = {}
        self._seen_lock = threading.Lock()
        self._seen_since = time.monotonic()
        try:
            for d in (self.directory, self._msg, self._state, self._tmp):
                d.mkdir(parents=True, exist_ok=True)
            self._recover()
        except OSError as exc:
            raise SpoolError(f"{self.directory}: cannot open the queue: {exc}") from exc

    # --- crash recovery --------------------------------------------------------------------

    def _recover(self) -> None:
        """Remove half-written temp files and orphaned state files; convert the old layout."""
        with self._locked():
            removed = 0
            for tmp in self._tmp.iterdir():
                tmp.unlink(missing_ok=True)
                removed += 1
            for state in self._state.iterdir():
                if not (self._msg / state.name.removesuffix(".json")).exists():
                    state.unlink(missing_ok=True)
                    removed += 1
            if removed:
                _fsync_dir(self._tmp)
                _fsync_dir(self._state)
                _log.info(
                    "queue.spool_recovered", removed_files=removed, directory=str(self.directory)
                )
            self._convert_two_file_layout()

    def _convert_two_file_layout(self) -> None:
        """Move messages from the ``data/`` + ``env/`` layout (stsguard before 2026-11-29) into
        ``msg/``, each durably before its old files go; the old directories go when empty."""
        env_dir, data_dir = self.directory / "env", self.directory / "data"
        if not env_dir.is_dir():
            return
        converted = 0
        for env in sorted(env_dir.glob("*.json")):
            data = data_dir / env.stem
            if not valid_queue_id(env.stem) or not data.exists():
                continue  # left for an administrator; logged below
            target = self._msg / env.stem
            if not target.exists():
                self._write_durably(target, env.read_bytes().strip() + b"\n" + data.read_bytes())
            env.unlink()
            data.unlink()
            converted += 1
        for old in (data_dir, env_dir):
            # Data without an envelope was never acknowledged (the old commit point).
            if old is data_dir and not any(env_dir.iterdir()):
                for orphan in old.iterdir():
                    orphan.unlink()
            with contextlib.suppress(OSError):
                old.rmdir()
        if env_dir.exists():
            _log.error("queue.spool_old_layout_left", directory=str(env_dir))
        _fsync_dir(self.directory)
        _log.info("queue.spool_converted", messages=converted, directory=str(self.directory))

    # --- low-level durable writes -----------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, shared: bool = False) -> Iterator[None]:
        """Exclusive for read-modify-write and recovery; shared for `commit`, which only adds new
        files but must not have its temp files removed by another process's recovery."""
        # A fresh open file description per call: flock then excludes other threads too.
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_temp(self, name: str, blob: bytes) -> Path:
        """Write and fsync a temp file; returns its path (removed again if writing fails)."""
        tmp = self._tmp / f"{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp

    def _write_durably(self, target: Path, blob: bytes) -> None:
        """Temp file, fsync, rename into place, fsync the target directory."""
        os.rename(self._write_temp(target.name, blob), target)
        _fsync_dir(target.parent)

    def _msg_path(self, queue_id: str) -> Path:
        if not valid_queue_id(queue_id):
            raise UnknownMessage(f"no queued message {queue_id!r}")
        return self._msg / queue_id

    def _read(self, queue_id: str, *, state: bool = True) -> QueuedMessage:
        """The envelope: the state file when there is one, else the message file's first line."""
        return self._load(queue_id, state=state)[0]

    def _load(
        self, queue_id: str, *, state: bool = True, body: bool = False
    ) -> tuple[QueuedMessage, bytes]:
        """The envelope as `_read` gives it, and the message bytes when `body` (else b""): one
        open of the message file either way."""
        path = self._msg_path(queue_id)
        try:
            with path.open("rb") as f:
                header = f.readline()
                data = f.read() if body else b""
            if state:
                with contextlib.suppress(FileNotFoundError):
                    header = (self._state / f"{queue_id}.json").read_bytes()
        except FileNotFoundError:
            raise UnknownMessage(f"no queued message {queue_id!r}") from None
        except OSError as exc:
            raise SpoolError(f"{path}: cannot read: {exc}") from exc
        try:
            message = _decode(header)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"{path}: damaged envelope: {exc}") from exc
        if message.id != queue_id:
            raise SpoolError(f"{path}: damaged envelope: it names {message.id!r}")
        return message, data

    # --- public API ----------------------------------------------------------------------------

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
                        tmp = self._write_temp(message.id, _encode(message) + b"\n" + data)
                    except OSError as exc:
                        results[i] = SpoolError(f"{self.directory}: cannot queue a message: {exc}")
                    else:
                        written.append((i, tmp, target))
                for _, tmp, target in written:
                    os.rename(tmp, target)
                if written:
                    _fsync_dir(self._msg)
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
                            flags=MessageFlags(is_bounce=True),
                            queue_id=message.dsn_id,
                        ),
                        client="stsguard",
                    )
                    try:
                        self._write_durably(target, _encode(bounce) + b"\n" + dsn)
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
                flags=MessageFlags(is_bounce=True),
                queue_id=warning_id,
            )
            try:
                self._write_state(warned)
                self._write_durably(self._msg / warning_id, _encode(bounce) + b"\n" + dsn)
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
                yield ScanEntry(
                    name,
                    min(pending) if pending else None,
                    float(raw["received_at"]),
                    bool(raw.get("held", "")),
                    failed,
                )
            except FileNotFoundError:
                continue  # finished between the listing and the read
            except (OSError, ValueError, KeyError, TypeError) as exc:
                _log.error("spool_damaged_envelope", file=str(self._msg / name), error=str(exc))

    def _write_state(self, message: QueuedMessage) -> None:
        self._write_durably(self._state / f"{message.id}.json", _encode(message))

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

    def _remove(self, queue_id: str) -> None:
        # The message file first: it is the commit record; a state file left behind is removed
        # at start.
        self._msg_path(queue_id).unlink(missing_ok=True)
        (self._state / f"{queue_id}.json").unlink(missing_ok=True)

    def flush(self) -> int:
        """Make every pending recipient due now; returns how many messages were touched."""
        now = self.clock()
        touched = 0
        with self._locked():
            for message in self.list():
                if not message.pending or message.is_due(now):
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
