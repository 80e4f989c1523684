"""The durable queue: state changes, restart, crash leftovers and the fsync-before-rename order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import SpoolError, UnknownMessage
from relay.spool import MessageFlags, RcptStatus, Spool, valid_queue_id


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
    assert all(r.status is RcptStatus.PENDING and r.attempts == 0 for r in msg.recipients)
    assert msg.received_at == clock.now
    assert msg.flags == flags
    assert msg.size == len(b"X: y\r\n\r\nhi\r\n")
    assert spool.read_data(qid) == b"X: y\r\n\r\nhi\r\n"
    assert spool.data_path(qid).read_bytes() == b"X: y\r\n\r\nhi\r\n"


def test_null_sender_is_queued(spool: Spool) -> None:
    qid = spool.put("", ["b@example.org"], b"x\r\n")
    assert spool.get(qid).mail_from == ""


def test_put_without_recipients_is_refused(spool: Spool) -> None:
    with pytest.raises(SpoolError):
        spool.put("a@x", [], b"x")


def test_due_deferred_delivered_bounced(spool: Spool, clock: Clock) -> None:
    qid = spool.put("a@x", ["b@y", "c@y", "d@y"], b"data\r\n")
    assert [m.id for m in spool.due(clock.now)] == [qid]

    msg = spool.mark_deferred(
        qid, ["b@y", "c@y", "d@y"], error="451 busy", next_attempt_at=clock.now + 300
    )
    assert all(r.attempts == 1 and r.last_error == "451 busy" for r in msg.recipients)
    assert spool.due(clock.now) == []
    assert [m.id for m in spool.due(clock.now + 300)] == [qid]

    spool.mark_delivered(qid, ["b@y"])
    spool.mark_bounced(qid, ["c@y"], "550 no such user")
    msg = spool.get(qid)
    status = {r.address: r.status for r in msg.recipients}
    assert status == {
        "b@y": RcptStatus.DELIVERED,
        "c@y": RcptStatus.BOUNCED,
        "d@y": RcptStatus.PENDING,
    }
    assert msg.recipients[1].last_error == "550 no such user"
    assert [r.address for r in msg.pending] == ["d@y"]

    # The last pending recipient finishing removes the message and its data.
    final = spool.mark_delivered(qid, ["d@y"])
    assert final.pending == ()
    with pytest.raises(UnknownMessage):
        spool.get(qid)
    assert list((spool.directory / "data").iterdir()) == []


def test_marking_a_finished_recipient_again_changes_nothing(spool: Spool) -> None:
    qid = spool.put("a@x", ["b@y", "c@y"], b"d")
    spool.mark_bounced(qid, ["b@y"], "550 gone")
    msg = spool.mark_delivered(qid, ["b@y"])
    assert msg.recipients[0].status is RcptStatus.BOUNCED


def test_restart_keeps_everything(tmp_path: Path, clock: Clock) -> None:
    first = Spool(tmp_path / "q", clock=clock)
    a = first.put("a@x", ["b@y"], b"one")
    b = first.put("<>", ["c@y", "d@y"], b"two", flags=MessageFlags(is_bounce=True))
    first.mark_deferred(b, ["c@y"], error="timeout", next_attempt_at=clock.now + 60)
    second = Spool(tmp_path / "q", clock=clock)
    assert {m.id for m in second.list()} == {a, b}
    assert second.get(b) == first.get(b)
    assert second.read_data(a) == b"one"


def test_half_written_files_are_cleaned_at_start(tmp_path: Path, clock: Clock) -> None:
    spool = Spool(tmp_path / "q", clock=clock)
    kept = spool.put("a@x", ["b@y"], b"kept")
    # A crash while writing a temp file, and one between the data and envelope renames.
    (tmp_path / "q" / "tmp" / "ABCDEFGHIJKLMNOP.1234.tmp").write_bytes(b"half")
    (tmp_path / "q" / "data" / "QRSTUVWXYZ234567").write_bytes(b"never acknowledged")
    reopened = Spool(tmp_path / "q", clock=clock)
    assert list((tmp_path / "q" / "tmp").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "q" / "data").iterdir()) == [kept]
    assert [m.id for m in reopened.list()] == [kept]


def test_durability_order_fsync_before_rename(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data file: write, fsync, rename, fsync dir; then the envelope the same way, last."""
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

    monkeypatch.setattr("relay.spool.os.open", fake_open)
    monkeypatch.setattr("relay.spool.os.fsync", fake_fsync)
    monkeypatch.setattr("relay.spool.os.rename", fake_rename)
    spool.put("a@x", ["b@y"], b"body")
    assert events == [
        "fsync:file",
        "rename:data",
        "fsync:data",
        "fsync:file",
        "rename:env",
        "fsync:env",
    ]


def test_flush_makes_everything_due(spool: Spool, clock: Clock) -> None:
    qid = spool.put("a@x", ["b@y"], b"d")
    spool.mark_deferred(qid, ["b@y"], error="later", next_attempt_at=clock.now + 3600)
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
    (spool.directory / "env" / f"{qid}.json").write_bytes(b"{not json")
    with pytest.raises(SpoolError):
        spool.get(qid)
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
