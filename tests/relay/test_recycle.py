"""Files of delivered mail are emptied, kept in ``queue/free/`` and reused for new mail: the next
message gets the same inode, never the old content; ``free/`` stays bounded and is cleared when a
spool is opened."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.errors import SpoolError
from relay.queue import recycle
from relay.queue.envelope import encode_envelope
from relay.queue.recycle import FreeFiles
from relay.queue.spool import Spool


def _inode(spool: Spool, queue_id: str) -> int:
    return os.stat(spool.directory / "msg" / queue_id).st_ino


def test_a_delivered_message_file_carries_the_next_message(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q")
    old = spool.put("a@x", ["b@y"], b"Subject: secret\r\n\r\nthe old body\r\n")
    inode = _inode(spool, old)
    assert spool.finish([old]) == [None]
    kept = list((spool.directory / "free").iterdir())
    assert [p.stat().st_size for p in kept] == [0]  # emptied at once: no mail lies there
    new = spool.put("c@x", ["d@y"], b"short\r\n")
    assert _inode(spool, new) == inode  # the same file, no new inode
    message, data = spool.read_message(new)
    assert (message.mail_from, data) == ("c@x", b"short\r\n")
    assert b"old body" not in (spool.directory / "msg" / new).read_bytes()
    assert list((spool.directory / "free").iterdir()) == []
    assert spool._free.taken == 1


def test_without_a_kept_file_a_new_one_is_made(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q")
    first = spool.put("a@x", ["b@y"], b"one")
    second = spool.put("a@x", ["b@y"], b"two")
    assert _inode(spool, first) != _inode(spool, second)
    assert spool.read_message(second)[1] == b"two"
    assert spool._free.taken == 0


def test_free_files_stay_bounded(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q")
    ids = [spool.put("a@x", ["b@y"], b"m") for _ in range(recycle.SLOTS + 20)]
    assert spool.finish(ids) == [None] * len(ids)
    assert len(list((spool.directory / "free").iterdir())) == recycle.SLOTS


def test_opening_a_spool_clears_what_a_crash_left_in_free(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q")
    qid = spool.put("a@x", ["b@y"], b"body")
    # A crash between the rename into free/ and the emptying leaves a whole message there.
    os.rename(spool.directory / "msg" / qid, spool.directory / "free" / "7")
    again = Spool(tmp_path / "q")
    assert list((again.directory / "free").iterdir()) == []
    assert again.list() == []  # it had left the queue: not delivered again


def test_a_file_taken_by_another_writer_is_passed_over(tmp_path: Path) -> None:
    free_dir = tmp_path / "free"
    free_dir.mkdir()
    for name in ("0", "1"):
        (free_dir / name).write_bytes(b"")
    mine = FreeFiles(str(free_dir))
    other = FreeFiles(str(free_dir))
    fd = other.take(str(tmp_path / "theirs"))
    assert fd is not None
    os.close(fd)
    fd = mine.take(str(tmp_path / "mine"))  # one of its two names is gone: it takes the other
    assert fd is not None
    os.close(fd)
    assert mine.take(str(tmp_path / "again")) is None  # empty, and looked at a moment ago
    assert sorted(p.name for p in tmp_path.iterdir()) == ["free", "mine", "theirs"]


def test_an_empty_free_directory_is_not_read_again_at_once(tmp_path: Path) -> None:
    free_dir = tmp_path / "free"
    free_dir.mkdir()
    now = [100.0]
    free = FreeFiles(str(free_dir), clock=lambda: now[0])
    assert free.take(str(tmp_path / "a")) is None
    (free_dir / "3").write_bytes(b"")
    assert free.take(str(tmp_path / "a")) is None  # within RESCAN of the last look
    now[0] += 2 * recycle.RESCAN
    fd = free.take(str(tmp_path / "a"))
    assert fd is not None
    os.close(fd)


def _leftover(spool: Spool) -> str:
    """What a crash can leave: a finished message's name on a file reused for another
    message (the rename away was not on disk yet, the new bytes were)."""
    old = spool.put("a@x", ["b@y"], b"old body")
    new = spool.put("c@x", ["d@y"], b"Subject: private\r\n\r\nnot for b@y\r\n")
    os.link(spool.directory / "msg" / new, spool.directory / "msg" / f"{old}.tmp")
    os.replace(spool.directory / "msg" / f"{old}.tmp", spool.directory / "msg" / old)
    os.unlink(spool.directory / "msg" / new)  # its commit never reached the disk
    return old


def test_the_scan_at_start_removes_a_reused_file_left_under_an_old_name(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q")
    _leftover(spool)
    assert list(spool.scan()) == []
    assert list((spool.directory / "msg").iterdir()) == []


def test_a_reused_file_never_gives_its_body_to_the_old_message(tmp_path: Path) -> None:
    """With the old message's state file left too, its envelope would be read from there:
    the body in the file is another message's and must not go to the old recipients."""
    spool = Spool(tmp_path / "q")
    old = _leftover(spool)
    state = spool.directory / "state" / f"{old}.json"
    state.write_bytes(encode_envelope(spool.new_message("a@x", ["b@y"], 8, queue_id=old)))
    with pytest.raises(SpoolError, match="another message"):
        spool.read_message(old)
    with pytest.raises(SpoolError, match="another message"):
        spool.read_data(old)
