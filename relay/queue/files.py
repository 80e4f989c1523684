"""The queue directory's files (layout and crash safety: see `relay.queue.spool`): the lock,
durable writes, reading an envelope back, removal, and recovery when a `Spool` opens."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import structlog

from relay.errors import SpoolError, UnknownMessage
from relay.queue.durable import fsync_dir, fsync_together
from relay.queue.envelope import (
    QueuedMessage,
    RecipientState,
    ScanEntry,
    decode_envelope,
    encode_envelope,
    not_understood,
    valid_queue_id,
)
from relay.queue.recycle import FreeFiles, names

_log = structlog.get_logger("relay.queue.spool")


def log_not_understood(queue_id: str, needs: Sequence[str]) -> None:
    """The one line for a message this stsguard must not deliver (see `relay.queue.envelope`)."""
    _log.error(
        "queue.envelope_not_understood",
        queue_id=queue_id,
        must_understand=list(needs),
        action="held, not delivered or changed, until a stsguard that knows these runs",
    )


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class SpoolFiles:
    """The queue directory's files: layout, lock, durable writes, reads, crash recovery."""

    def __init__(self, directory: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.clock = clock
        self._msg = self.directory / "msg"
        self._state = self.directory / "state"
        self._tmp = self.directory / "tmp"
        free = self.directory / "free"
        self._free = FreeFiles(str(free))
        # The same as text, for the per-message paths: a pathlib join and its str() cost more
        # than the system call they name (about 4% of the relay's CPU under load).
        self._msg_dir, self._state_dir = str(self._msg), str(self._state)
        self._tmp_dir, self._lock_file = str(self._tmp), str(self.directory / "lock")
        try:
            for d in (
                self.directory,
                self._msg,
                self._state,
                self._tmp,
                free,
            ):
                d.mkdir(parents=True, exist_ok=True)
            self._recover()
        except OSError as exc:
            raise SpoolError(f"{self.directory}: cannot open the queue: {exc}") from exc

    # --- crash recovery --------------------------------------------------------------------

    def _recover(self) -> None:
        """Remove half-written temp files and orphaned state files; convert the old layout."""
        with self._locked():
            self._free.clear()  # emptied files, or a finished message a crash left on its way
            removed = 0
            for tmp in self._tmp.iterdir():
                tmp.unlink(missing_ok=True)
                removed += 1
            for state in self._state.iterdir():
                if not (self._msg / state.name.removesuffix(".json")).exists():
                    state.unlink(missing_ok=True)
                    removed += 1
            if removed:
                fsync_dir(self._tmp)
                fsync_dir(self._state)
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
        fsync_dir(self.directory)
        _log.info("queue.spool_converted", messages=converted, directory=str(self.directory))

    # --- low-level durable writes -----------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, shared: bool = False, wait: bool = True) -> Iterator[bool]:
        """Exclusive for read-modify-write and recovery; shared for `commit` and `finish`, which
        only add or remove whole messages but must not meet another process's recovery or a
        read-modify-write. Yields False, without the lock, when `wait` is False and the lock is
        taken (True otherwise)."""
        # A fresh open file description per call: flock then excludes other threads too.
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            try:
                fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _write_temps(self, items: Sequence[tuple[str, bytes]]) -> list[str | OSError]:
        """`_write_temp` for several files, their fsyncs at once (`fsync_together`); per item the
        temp file's path, or the error that kept it from disk (its temp file removed)."""
        opened: list[tuple[int, str] | OSError] = []
        for name, blob in items:
            tmp = f"{self._tmp_dir}/{name}.{secrets.token_hex(4)}.tmp"
            try:
                fd = self._free.take(tmp)  # a finished message's file, emptied: no new inode
                if fd is None:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                opened.append(exc)
                continue
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                os.close(fd)
                _unlink(tmp)
                opened.append(exc)
                continue
            opened.append((fd, tmp))
        files = [item for item in opened if not isinstance(item, OSError)]
        errors = iter(fsync_together([fd for fd, _ in files]))
        results: list[str | OSError] = []
        for item in opened:
            if isinstance(item, OSError):
                results.append(item)
                continue
            fd, tmp = item
            error = next(errors)
            os.close(fd)
            if error is not None:
                _unlink(tmp)
                results.append(error)
            else:
                results.append(tmp)
        return results

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
        fsync_dir(target.parent)

    def _msg_path(self, queue_id: str) -> Path:
        return Path(self._msg_file(queue_id))

    def _msg_file(self, queue_id: str) -> str:
        if not valid_queue_id(queue_id):
            raise UnknownMessage(f"no queued message {queue_id!r}")
        return f"{self._msg_dir}/{queue_id}"

    def _state_file(self, queue_id: str) -> str:
        return f"{self._state_dir}/{queue_id}.json"

    def _read(self, queue_id: str, *, state: bool = True) -> QueuedMessage:
        """The envelope: the state file when there is one, else the message file's first line."""
        return self._load(queue_id, state=state)[0]

    def _load(
        self, queue_id: str, *, state: bool = True, body: bool = False
    ) -> tuple[QueuedMessage, bytes]:
        """The envelope as `_read` gives it, and the message bytes when `body` (else b""): one
        open of the message file either way."""
        path, header, data = self._msg_contents(queue_id, body=body)
        if state:
            try:
                with (
                    contextlib.suppress(FileNotFoundError),
                    open(self._state_file(queue_id), "rb") as f,
                ):
                    header = f.read()
            except OSError as exc:
                raise SpoolError(f"{path}: cannot read: {exc}") from exc
        try:
            message = decode_envelope(header)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"{path}: damaged envelope: {exc}") from exc
        if message.id != queue_id:
            raise SpoolError(f"{path}: damaged envelope: it names {message.id!r}")
        return message, data

    def _msg_contents(self, queue_id: str, *, body: bool) -> tuple[str, bytes, bytes]:
        """The message file's path, its first line (the envelope) and, when `body`, the bytes
        after it: only from a file whose first line names this message (a reused file a crash
        left under another name holds another message: `relay.queue.recycle`)."""
        path = self._msg_file(queue_id)
        try:
            with open(path, "rb") as f:
                first = f.readline()
                data = f.read() if body else b""
        except FileNotFoundError:
            raise UnknownMessage(f"no queued message {queue_id!r}") from None
        except OSError as exc:
            raise SpoolError(f"{path}: cannot read: {exc}") from exc
        if body and not names(first, queue_id):
            raise SpoolError(f"{path}: damaged: the file holds another message's envelope")
        return path, first, data

    def _write_state(self, message: QueuedMessage) -> None:
        self._write_durably(self._state / f"{message.id}.json", encode_envelope(message))

    def _remove(self, queue_id: str, *, keep_file: bool = False) -> None:
        # The message file first: it is the commit record; a state file left behind is removed
        # at start. `keep_file`: it goes to ``free/`` for the next message (`FreeFiles`).
        if keep_file:
            with contextlib.suppress(FileNotFoundError):
                self._free.keep(self._msg_file(queue_id))
        else:
            _unlink(self._msg_file(queue_id))
        _unlink(self._state_file(queue_id))

    def finish(self, queue_ids: Sequence[str]) -> list[SpoolError | None]:
        """Remove messages whose every pending recipient is done (the caller knows, having
        delivered them), without reading them first. One shared lock for the lot: intake
        commits go on meanwhile, a read-modify-write or recovery does not."""
        with self._locked(shared=True):
            return self._finish(queue_ids)

    def finish_now(self, queue_ids: Sequence[str]) -> list[SpoolError | None] | None:
        """`finish` without waiting for the lock: None when someone holds it exclusively."""
        with self._locked(shared=True, wait=False) as locked:
            return self._finish(queue_ids) if locked else None

    def _finish(self, queue_ids: Sequence[str]) -> list[SpoolError | None]:
        results: list[SpoolError | None] = []
        for queue_id in queue_ids:
            try:
                self._remove(queue_id, keep_file=True)
                results.append(None)
            except (OSError, UnknownMessage) as exc:
                results.append(SpoolError(f"{self.directory}: cannot remove {queue_id}: {exc}"))
        return results

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
                if raw.get("id") != name and name not in states:
                    # A finished message's file, reused, when a crash kept its old name: the
                    # mail in it was not yet accepted (relay.queue.recycle). Not a message.
                    _log.warning("queue.reused_file_removed", file=name, names=raw.get("id"))
                    _unlink(f"{self._msg_dir}/{name}")
                    continue
                pending = [
                    float(r["next_attempt_at"])
                    for r in raw["recipients"]
                    if r["status"] == RecipientState.PENDING.value
                ]
                failed = any(r["status"] == RecipientState.FAILED.value for r in raw["recipients"])
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
