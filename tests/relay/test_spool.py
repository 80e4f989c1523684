"""The durable queue: state changes, restart, crash leftovers, the fsync-before-rename order, group
commit and the conversion of the old two-file layout."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import SpoolError, UnknownMessage
from relay.queue import durable
from relay.queue.spool import (
    MessageFlags,
    QueuedMessage,
    Recipient,
    RecipientState,
    Spool,
    valid_queue_id,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def spool(tmp_path: Path, clock: Clock) -> Spool:
    return Spool(tmp_path / "queue", clock=clock)


def test_put_get_read_data(spool: Spool, clock: Clock) -> None:
    flags = MessageFlags(tls_required_no=True, no_tlsrpt=True)
    qid = spool.put(
        "a@example.net",
        ["b@example.org", "c@example.com"],
        b"X: y\r\n\r\nhi\r\n",
        flags=flags,
        client="127.0.0.1",
    )
    assert valid_queue_id(qid)
    msg = spool.get(qid)
    assert msg.mail_from == "a@example.net"
    assert [r.address for r in msg.recipients] == ["b@example.org", "c@example.com"]
    assert all(r.status is RecipientState.PENDING and r.attempts == 0 for r in msg.recipients)
    assert msg.received_at == clock.now
    assert msg.flags == flags
    assert msg.size == len(b"X: y\r\n\r\nhi\r\n")
    assert spool.read_data(qid) == b"X: y\r\n\r\nhi\r\n"
    # One file per message: the envelope line, then the bytes as received.
    assert (spool.directory / "msg" / qid).read_bytes().endswith(b"}\nX: y\r\n\r\nhi\r\n")


def test_null_sender_is_queued(spool: Spool) -> None:
    qid = spool.put("", ["b@example.org"], b"x\r\n")
    assert spool.get(qid).mail_from == ""


def test_put_without_recipients_is_refused(spool: Spool) -> None:
    with pytest.raises(SpoolError):
        spool.put("a@x", [], b"x")


def test_due_deferred_delivered_bounced(spool: Spool, clock: Clock) -> None:
    qid = spool.put("a@x", ["b@y", "c@y", "d@y"], b"data\r\n")
    assert [m.id for m in spool.due(clock.now)] == [qid]

    msg = spool.record(
        qid,
        deferred=dict.fromkeys(["b@y", "c@y", "d@y"], "451 busy"),
        next_attempt_at=clock.now + 300,
    )
    assert all(r.attempts == 1 and r.last_error == "451 busy" for r in msg.recipients)
    assert spool.due(clock.now) == []
    assert [m.id for m in spool.due(clock.now + 300)] == [qid]

    spool.record(qid, delivered=["b@y"])
    failed = spool.record(qid, failed={"c@y": "550 no such user"})
    assert failed.dsn_id  # its DSN's id, set before the DSN is queued
    spool.queue_dsn(qid, None, now=clock.now)
    msg = spool.get(qid)
    status = {r.address: r.status for r in msg.recipients}
    assert status == {
        "b@y": RecipientState.DELIVERED,
        "c@y": RecipientState.BOUNCED,
        "d@y": RecipientState.PENDING,
    }
    assert msg.recipients[1].last_error == "550 no such user"
    assert [r.address for r in msg.pending] == ["d@y"]

    # The last pending recipient finishing removes the message and its data.
    final = spool.record(qid, delivered=["d@y"])
    assert final.pending == ()
    with pytest.raises(UnknownMessage):
        spool.get(qid)
    assert list((spool.directory / "msg").iterdir()) == []
    assert list((spool.directory / "state").iterdir()) == []


def test_marking_a_finished_recipient_again_changes_nothing(spool: Spool) -> None:
    qid = spool.put("a@x", ["b@y", "c@y"], b"d")
    spool.record(qid, failed={"b@y": "550 gone"})
    msg = spool.record(qid, delivered=["b@y"])
    assert msg.recipients[0].status is RecipientState.FAILED


def test_restart_keeps_everything(tmp_path: Path, clock: Clock) -> None:
    first = Spool(tmp_path / "q", clock=clock)
    a = first.put("a@x", ["b@y"], b"one")
    b = first.put("<>", ["c@y", "d@y"], b"two", flags=MessageFlags(is_bounce=True))
    first.record(b, deferred=dict.fromkeys(["c@y"], "timeout"), next_attempt_at=clock.now + 60)
    second = Spool(tmp_path / "q", clock=clock)
    assert {m.id for m in second.list()} == {a, b}
    assert second.get(b) == first.get(b)
    assert second.read_data(a) == b"one"


def test_half_written_files_are_cleaned_at_start(tmp_path: Path, clock: Clock) -> None:
    spool = Spool(tmp_path / "q", clock=clock)
    kept = spool.put("a@x", ["b@y"], b"kept")
    spool.record(kept, deferred=dict.fromkeys(["b@y"], "later"), next_attempt_at=clock.now + 60)
    # A crash while writing a temp file, and one between removing a message and its state file.
    (tmp_path / "q" / "tmp" / "ABCDEFGHIJKLMNOP.1234.tmp").write_bytes(b"half")
    (tmp_path / "q" / "state" / "QRSTUVWXYZ234567.json").write_bytes(b"{}")
    reopened = Spool(tmp_path / "q", clock=clock)
    assert list((tmp_path / "q" / "tmp").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "q" / "state").iterdir()) == [f"{kept}.json"]
    assert [m.id for m in reopened.list()] == [kept]
    assert reopened.get(kept).recipients[0].last_error == "later"


def test_durability_order_fsync_before_rename(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One file per message: write, fsync, rename into msg/, fsync msg/."""
    events: list[str] = []
    real_fsync, real_rename, real_open = os.fsync, os.rename, os.open
    opened: dict[int, str] = {}

    def fake_open(path: object, flags: int, *args: int) -> int:
        fd = real_open(path, flags, *args)  # type: ignore[arg-type]
        opened[fd] = Path(str(path)).name if flags & os.O_DIRECTORY else "file"
        return fd

    def fake_fsync(fd: int) -> None:
        events.append(f"fsync:{opened.get(fd, '?')}")
        real_fsync(fd)

    def fake_rename(src: object, dst: object) -> None:
        events.append(f"rename:{Path(str(dst)).parent.name}")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr("relay.queue.spool.os.open", fake_open)
    monkeypatch.setattr("relay.queue.spool.os.fsync", fake_fsync)
    monkeypatch.setattr("relay.queue.spool.os.rename", fake_rename)
    spool.put("a@x", ["b@y"], b"body")
    assert events == ["fsync:file", "rename:msg", "fsync:msg"]
    events.clear()
    # A batch: every file synced before any rename, then one directory fsync for all.
    batch = [(spool.new_message("a@x", ["b@y"], 1), b"x") for _ in range(3)]
    assert spool.commit(batch) == [None, None, None]
    assert events == ["fsync:file"] * 3 + ["rename:msg"] * 3 + ["fsync:msg"]
    assert {m.id for m in spool.list()} >= {m.id for m, _ in batch}


def test_a_failed_write_fails_only_its_message(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def disk_full_for_big(fd: int, data: bytes) -> int:
        if len(data) > 1000:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("relay.queue.spool.os.write", disk_full_for_big)
    small = spool.new_message("a@x", ["b@y"], 2)
    big = spool.new_message("a@x", ["b@y"], 2000)
    errors = spool.commit([(small, b"ok"), (big, b"x" * 2000)])
    assert errors[0] is None
    assert isinstance(errors[1], SpoolError)
    assert "No space left" in str(errors[1])
    assert [m.id for m in spool.list()] == [small.id]
    assert list((spool.directory / "tmp").iterdir()) == []


@pytest.mark.parametrize("writeback", [True, False], ids=["sync_file_range", "threads"])
def test_a_failed_file_sync_fails_only_its_message(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, writeback: bool
) -> None:
    """A batch's files are synced at once (`fsync_together`: writeback started for all, then
    each synced; or, without sync_file_range, from threads); one that fails is not queued."""
    if not writeback:
        monkeypatch.setattr("relay.queue.durable._start_writeback", None)
    elif sys.platform.startswith("linux"):
        assert durable._start_writeback is not None
    real_fsync, real_open = os.fsync, os.open
    doomed: set[int] = set()

    def open_marking_second(path: object, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)  # type: ignore[arg-type]
        if str(path).endswith(".tmp") and "DOOMED" in str(path):
            doomed.add(fd)
        return fd

    def fsync(fd: int) -> None:
        if fd in doomed:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr("relay.queue.spool.os.open", open_marking_second)
    monkeypatch.setattr("relay.queue.spool.os.fsync", fsync)
    good = [spool.new_message("a@x", ["b@y"], 1) for _ in range(3)]
    bad = replace(good[0], id="DOOMEDAAAAAAAAAA")
    errors = spool.commit([(good[0], b"x"), (bad, b"x"), (good[1], b"x"), (good[2], b"x")])
    assert [e is None for e in errors] == [True, False, True, True]
    assert "Input/output error" in str(errors[1])
    assert {m.id for m in spool.list()} == {m.id for m in good}
    assert list((spool.directory / "tmp").iterdir()) == []


def test_a_failed_directory_sync_fails_the_whole_batch(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("relay.queue.spool.fsync_dir", broken)
    batch = [(spool.new_message("a@x", ["b@y"], 1), b"x") for _ in range(2)]
    errors = spool.commit(batch)
    assert all(isinstance(e, SpoolError) for e in errors)
    # Its senders hear of a failure, so nothing of it may be delivered.
    assert spool.list() == []


def test_the_two_file_layout_is_converted(tmp_path: Path, clock: Clock) -> None:
    """A queue written by the earlier layout (data/<id> + env/<id>.json) keeps every message."""
    q = tmp_path / "q"
    (q / "data").mkdir(parents=True)
    (q / "env").mkdir()
    ids = ["ABCDEFGHIJKLMNOP", "QRSTUVWXYZ234567"]
    for n, qid in enumerate(ids):
        envelope = {
            "id": qid,
            "mail_from": "a@x",
            "recipients": [
                {
                    "address": "b@y",
                    "status": "pending",
                    "attempts": n,
                    "next_attempt_at": clock.now,
                    "last_error": "451 later" if n else "",
                }
            ],
            "received_at": clock.now + n,
            "size": 5,
            "flags": {"is_bounce": bool(n)},
            "client": "127.0.0.1",
        }
        (q / "env" / f"{qid}.json").write_text(json.dumps(envelope))
        (q / "data" / qid).write_bytes(b"body%d" % n)
    (q / "data" / "AAAAAAAAAAAAAAAA").write_bytes(b"never acknowledged")
    spool = Spool(q, clock=clock)
    assert [m.id for m in spool.list()] == ids
    assert spool.read_data(ids[1]) == b"body1"
    assert spool.get(ids[1]).flags.is_bounce
    assert spool.get(ids[1]).recipients[0].last_error == "451 later"
    assert not (q / "data").exists()
    assert not (q / "env").exists()
    assert sorted(p.name for p in (q / "msg").iterdir()) == ids


def test_flush_makes_everything_due(spool: Spool, clock: Clock) -> None:
    qid = spool.put("a@x", ["b@y"], b"d")
    spool.record(qid, deferred=dict.fromkeys(["b@y"], "later"), next_attempt_at=clock.now + 3600)
    clock.now += 10
    assert spool.due(clock.now) == []
    # Another process (another Spool on the same directory) flushes.
    other = Spool(spool.directory, clock=clock)
    assert other.flush() == 1
    assert [m.id for m in spool.due(clock.now)] == [qid]


def test_delete_and_unknown_ids(spool: Spool) -> None:
    qid = spool.put("a@x", ["b@y"], b"d")
    spool.delete(qid)
    with pytest.raises(UnknownMessage):
        spool.delete(qid)
    for bad in ["", "../../etc/passwd", "short", qid.lower()]:
        with pytest.raises(UnknownMessage):
            spool.get(bad)
    assert spool.list() == []


def test_damaged_envelope_is_a_spool_error(spool: Spool) -> None:
    qid = spool.put("a@x", ["b@y"], b"d")
    (spool.directory / "msg" / qid).write_bytes(b"{not json\nd")
    with pytest.raises(SpoolError):
        spool.get(qid)
    # A file whose envelope names another message is damaged too.
    other = spool.put("a@x", ["b@y"], b"d")
    (spool.directory / "msg" / "AAAAAAAAAAAAAAAA").write_bytes(
        (spool.directory / "msg" / other).read_bytes()
    )
    with pytest.raises(SpoolError, match="names"):
        spool.get("AAAAAAAAAAAAAAAA")
    spool.delete(other)
    (spool.directory / "msg" / "AAAAAAAAAAAAAAAA").unlink()
    good = spool.put("a@x", ["b@y"], b"d")
    assert [m.id for m in spool.list()] == [good]  # the damaged one does not stop the queue


addresses = st.text(st.characters(codec="utf-8"), min_size=0, max_size=40)


@settings(max_examples=50, deadline=None)
@given(
    mail_from=addresses,
    rcpts=st.lists(addresses, min_size=1, max_size=4, unique=True),
    data=st.binary(max_size=200),
)
def test_envelope_round_trip(
    tmp_path_factory: pytest.TempPathFactory, mail_from: str, rcpts: list[str], data: bytes
) -> None:
    spool = Spool(tmp_path_factory.mktemp("q"), clock=Clock())
    qid = spool.put(mail_from, rcpts, data)
    msg = spool.get(qid)
    assert msg.mail_from == mail_from
    assert [r.address for r in msg.recipients] == rcpts
    assert spool.read_data(qid) == data


def test_finish_removes_messages_and_their_state(spool: Spool, clock: Clock) -> None:
    a = spool.put("a@x", ["b@y"], b"one")
    b = spool.put("a@x", ["c@y"], b"two")
    spool.record(b, deferred=dict.fromkeys(["c@y"], "451"), next_attempt_at=clock.now)
    assert spool.finish([a, b, "not-an-id"])[:2] == [None, None]
    assert spool.list() == []
    assert list((spool.directory / "state").iterdir()) == []
    assert spool.finish([a]) == [None]  # already gone: nothing to do


def test_finish_now_waits_for_no_one_and_shares_the_lock_with_commits(spool: Spool) -> None:
    """The queue manager removes delivered mail on its event loop: never blocked by an intake
    commit (shared lock), but not in the middle of another process's read-modify-write."""
    a = spool.put("a@x", ["b@y"], b"one")
    b = spool.put("a@x", ["c@y"], b"two")
    holder = os.open(spool.directory / "lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert spool.finish_now([a]) is None  # would have to wait: the caller uses a thread
        assert spool.get(a).id == a
        fcntl.flock(holder, fcntl.LOCK_SH)  # as an intake commit holds it
        assert spool.finish_now([a]) == [None]
    finally:
        os.close(holder)
    assert [m.id for m in spool.list()] == [b]


def test_the_envelope_keeps_every_field(spool: Spool, clock: Clock) -> None:
    """A field added to the envelope or its recipients must reach the disk and come back."""
    flags = MessageFlags(**{f.name: True for f in fields(MessageFlags)})
    qid = spool.put("a@x", ["b@y"], b"d", flags=flags, client="192.0.2.1")
    spool.record(qid, deferred=dict.fromkeys(["b@y"], "451 later"), next_attempt_at=clock.now + 5)
    raw = json.loads((spool.directory / "state" / f"{qid}.json").read_bytes())
    # What only the codec knows: the schema version, the reader's view of unknown names.
    in_memory = {f.name for f in fields(QueuedMessage)} - {"unknown", "not_understood"}
    assert set(raw) - {"schema", "must_understand"} == in_memory
    assert set(raw["recipients"][0]) == {f.name for f in fields(Recipient)}
    reopened = Spool(spool.directory, clock=clock).get(qid)
    assert reopened == spool.get(qid)
    assert reopened.flags == flags
    assert reopened.recipients[0] == Recipient(
        "b@y", RecipientState.PENDING, 1, clock.now + 5, "451 later"
    )


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids whose envelope `Spool` reads from disk from now on."""
    seen: list[str] = []
    real_read = Spool._read

    def counting_read(self: Spool, queue_id: str, *, state: bool = True) -> QueuedMessage:
        seen.append(queue_id)
        return real_read(self, queue_id, state=state)

    monkeypatch.setattr(Spool, "_read", counting_read)
    return seen


def test_a_scan_reads_only_what_changed(spool: Spool, clock: Clock, reads: list[str]) -> None:
    """A large queue is scanned every second: unchanged envelopes are not read again, and
    changes by another process (a new state file, a deletion, a new message) are seen."""
    ids = [spool.put("a@x", [f"b{n}@y"], b"d") for n in range(5)]
    assert len(spool.list()) == 5
    reads.clear()
    assert len(spool.list()) == 5
    assert reads == []

    other = Spool(spool.directory, clock=clock)  # another process
    other.record(ids[0], deferred={"b0@y": "451"}, next_attempt_at=clock.now + 60)
    other.delete(ids[1])
    added = other.put("a@x", ["c@y"], b"d")
    reads.clear()
    listed = {m.id: m for m in spool.list()}
    assert sorted(reads) == sorted([ids[0], added])
    assert set(listed) == {ids[0], ids[2], ids[3], ids[4], added}
    assert listed[ids[0]].recipients[0].next_attempt_at == clock.now + 60


def test_a_scan_reads_everything_again_after_a_while(
    spool: Spool, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    qid = spool.put("a@x", ["b@y"], b"d")
    spool.list()
    reads.clear()
    monkeypatch.setattr("relay.queue.spool.RELIST_SECONDS", 0.0)
    spool.list()
    assert reads == [qid]


def test_read_message_gives_the_current_envelope_and_the_bytes(spool: Spool, clock: Clock) -> None:
    qid = spool.put("a@x", ["b@y"], b"line\r\n")
    spool.record(qid, deferred=dict.fromkeys(["b@y"], "451 later"), next_attempt_at=clock.now + 9)
    message, data = spool.read_message(qid)
    assert data == b"line\r\n"
    assert message == spool.get(qid)
    assert message.recipients[0].last_error == "451 later"
    with pytest.raises(UnknownMessage):
        spool.read_message("AAAAAAAAAAAAAAAA")
