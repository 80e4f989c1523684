"""The durable queue: one data file and one envelope file per message under ``state_dir/queue``.

Layout::

    queue/data/<id>      the message bytes as received (CRLF line ends, dot-unstuffed)
    queue/env/<id>.json  the envelope: sender, per-recipient state, flags, received_at
    queue/tmp/           files being written; anything left here after a crash is removed

Why files and not SQLite: message bodies are written once and read once, may be large, and the
relay, ``stsguard queue`` and an administrator's ``ls`` all see the same state without a schema.
Every write is crash-safe the same way: write a temp file, ``fsync`` it, ``rename`` it into place
(atomic on POSIX), ``fsync`` the directory. `put` writes the data file first and the envelope last,
so an envelope always has its data; the envelope's rename is the commit point. A data file without
an envelope (a crash between the two renames, or during `delete`) was never acknowledged and is
removed when a `Spool` opens the directory.

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
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from relay.errors import SpoolError, UnknownMessage

_log = structlog.get_logger("relay.spool")

_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


class RcptStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    BOUNCED = "bounced"


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

    @property
    def pending(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if r.status is RcptStatus.PENDING)

    @property
    def next_attempt_at(self) -> float | None:
        """When the earliest pending recipient is due; None when nothing is pending."""
        times = [r.next_attempt_at for r in self.pending]
        return min(times) if times else None

    def is_due(self, now: float) -> bool:
        due = self.next_attempt_at
        return due is not None and due <= now


# `Spool.list` shadows the builtin inside the class body.
_Messages = list[QueuedMessage]


def new_queue_id() -> str:
    """16 base32 characters (80 random bits): unique without coordination between processes."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii")


def valid_queue_id(text: str) -> bool:
    return len(text) == 16 and set(text) <= _ID_CHARS


def _encode(message: QueuedMessage) -> bytes:
    raw = asdict(message)
    raw["recipients"] = [{**asdict(r), "status": r.status.value} for r in message.recipients]
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
        self._data = self.directory / "data"
        self._env = self.directory / "env"
        self._tmp = self.directory / "tmp"
        try:
            for d in (self.directory, self._data, self._env, self._tmp):
                d.mkdir(parents=True, exist_ok=True)
            self._recover()
        except OSError as exc:
            raise SpoolError(f"{self.directory}: cannot open the queue: {exc}") from exc

    # --- crash recovery --------------------------------------------------------------------

    def _recover(self) -> None:
        """Remove half-written temp files and data files whose envelope never got committed."""
        with self._locked():
            removed = 0
            for tmp in self._tmp.iterdir():
                tmp.unlink(missing_ok=True)
                removed += 1
            for data in self._data.iterdir():
                if not (self._env / f"{data.name}.json").exists():
                    data.unlink(missing_ok=True)
                    removed += 1
            if removed:
                _fsync_dir(self._tmp)
                _fsync_dir(self._data)
                _log.info("spool_recovered", removed_files=removed, directory=str(self.directory))

    # --- low-level durable writes -----------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, shared: bool = False) -> Iterator[None]:
        """Exclusive for read-modify-write and recovery; shared for `put`, which only adds new
        files but must not have its uncommitted data file taken for an orphan by recovery."""
        # A fresh open file description per call: flock then excludes other threads too.
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_durably(self, target: Path, blob: bytes) -> None:
        """Temp file, fsync, rename into place, fsync the target directory."""
        tmp = self._tmp / f"{target.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
        _fsync_dir(target.parent)

    def _env_path(self, queue_id: str) -> Path:
        if not valid_queue_id(queue_id):
            raise UnknownMessage(f"no queued message {queue_id!r}")
        return self._env / f"{queue_id}.json"

    def _read(self, queue_id: str) -> QueuedMessage:
        path = self._env_path(queue_id)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise UnknownMessage(f"no queued message {queue_id!r}") from None
        except OSError as exc:
            raise SpoolError(f"{path}: cannot read: {exc}") from exc
        try:
            return _decode(blob)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"{path}: damaged envelope: {exc}") from exc

    # --- public API ----------------------------------------------------------------------------

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
        if not rcpts:
            raise SpoolError("a message needs at least one recipient")
        queue_id = queue_id or new_queue_id()
        if not valid_queue_id(queue_id):
            raise SpoolError(f"not a queue id: {queue_id!r}")
        now = self.clock()
        message = QueuedMessage(
            id=queue_id,
            mail_from=mail_from,
            recipients=tuple(Recipient(a, next_attempt_at=now) for a in rcpts),
            received_at=now,
            size=len(data),
            flags=flags or MessageFlags(),
            client=client,
        )
        try:
            with self._locked(shared=True):
                self._write_durably(self._data / queue_id, data)
                self._write_durably(self._env / f"{queue_id}.json", _encode(message))
        except OSError as exc:
            raise SpoolError(f"{self.directory}: cannot queue a message: {exc}") from exc
        return queue_id

    def get(self, queue_id: str) -> QueuedMessage:
        return self._read(queue_id)

    def read_data(self, queue_id: str) -> bytes:
        self._env_path(queue_id)
        try:
            return self.data_path(queue_id).read_bytes()
        except FileNotFoundError:
            raise UnknownMessage(f"no queued message {queue_id!r}") from None

    def data_path(self, queue_id: str) -> Path:
        self._env_path(queue_id)
        return self._data / queue_id

    def list(self) -> _Messages:
        """Every queued message, oldest first."""
        messages = []
        for path in self._env.glob("*.json"):
            try:
                messages.append(self._read(path.stem))
            except UnknownMessage:
                continue  # finished between glob and read
            except SpoolError as exc:
                # One damaged file must not stop the queue; `get` still reports it.
                _log.error("spool_damaged_envelope", file=str(path), error=str(exc))
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
                    self._write_durably(self._env_path(queue_id), _encode(updated))
                else:
                    self._remove(queue_id)
            except OSError as exc:
                raise SpoolError(f"{self.directory}: cannot update {queue_id}: {exc}") from exc
        return updated

    def delete(self, queue_id: str) -> None:
        """Remove a message whatever its state; `UnknownMessage` if there is none."""
        with self._locked():
            self._read(queue_id)
            try:
                self._remove(queue_id)
            except OSError as exc:
                raise SpoolError(f"{self.directory}: cannot delete {queue_id}: {exc}") from exc

    def _remove(self, queue_id: str) -> None:
        # Envelope first: it is the commit record; a data file left behind is cleaned at start.
        self._env_path(queue_id).unlink(missing_ok=True)
        _fsync_dir(self._env)
        (self._data / queue_id).unlink(missing_ok=True)

    def flush(self) -> int:
        """Make every pending recipient due now; returns how many messages were touched."""
        now = self.clock()
        touched = 0
        with self._locked():
            for path in self._env.glob("*.json"):
                try:
                    message = self._read(path.stem)
                except UnknownMessage:
                    continue
                if not message.pending or message.is_due(now):
                    continue
                recipients = tuple(
                    replace(r, next_attempt_at=now) if r.status is RcptStatus.PENDING else r
                    for r in message.recipients
                )
                try:
                    self._write_durably(path, _encode(replace(message, recipients=recipients)))
                except OSError as exc:
                    raise SpoolError(f"{self.directory}: cannot flush {message.id}: {exc}") from exc
                touched += 1
        return touched
