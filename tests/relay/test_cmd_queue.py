"""`stsguard queue list|flush|delete` as a user runs it: a subprocess on a config file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay.queue.spool import MessageFlags, Spool
from tests.cli import ROOT, run_cli


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "stsguard.toml"
    path.write_text(f'[relay]\nstate_dir = "{tmp_path / "state"}"\n')
    return path


def stsguard(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("queue", *args, "--config", str(config))


def test_list_empty_queue_does_not_create_it(config_file: Path, tmp_path: Path) -> None:
    result = stsguard(config_file, "list")
    assert result.returncode == 0
    assert result.stdout.strip() == "queue is empty"
    assert not (tmp_path / "state").exists()


def test_list_flush_delete(config_file: Path, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "state" / "queue")
    first = spool.put("a@example.net", ["b@example.org", "c@example.org"], b"one\r\n")
    second = spool.put("", ["d@example.com"], b"two\r\n", flags=MessageFlags(is_bounce=True))
    later = time.time() + 3600
    spool.record(
        first, deferred=dict.fromkeys(["b@example.org"], "451 4.7.5 MTA-STS"), next_attempt_at=later
    )
    spool.record(first, delivered=["c@example.org"])
    spool.record(
        second, deferred=dict.fromkeys(["d@example.com"], "timeout"), next_attempt_at=later
    )

    text = stsguard(config_file, "list")
    assert text.returncode == 0, text.stderr
    assert first in text.stdout
    assert second in text.stdout
    assert "451 4.7.5 MTA-STS" in text.stdout
    assert "[is_bounce]" in text.stdout
    assert "2 message(s)" in text.stdout

    listed = stsguard(config_file, "list", "--json")
    data = json.loads(listed.stdout)
    assert [m["id"] for m in data] == [first, second]
    assert data[0]["recipients"][0]["status"] == "pending"
    assert data[0]["recipients"][0]["attempts"] == 1
    assert data[0]["recipients"][1]["status"] == "delivered"
    assert data[1]["mail_from"] == ""
    assert data[1]["flags"] == ["is_bounce"]

    assert spool.due(time.time()) == []
    flushed = stsguard(config_file, "flush")
    assert flushed.returncode == 1  # no relay is running to send them
    assert "no relay is running" in flushed.stderr
    assert "2 message(s)" in flushed.stderr
    # The running relay polls `due`: both are due now.
    assert {m.id for m in spool.due(time.time() + 1)} == {first, second}

    deleted = stsguard(config_file, "delete", first)
    assert deleted.returncode == 0
    assert [m.id for m in spool.list()] == [second]


def test_delete_by_domain_says_what_happened_and_list_shows_the_current_status(
    config_file: Path, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "state" / "queue")
    rcpts = ["b@x.example", "c@y.example", "d@z.example"]
    qid = spool.put("a@example.net", rcpts, b"one\r\n")
    later = time.time() + 3600
    spool.record(qid, deferred=dict.fromkeys(rcpts, "451 4.3.0 try later"), next_attempt_at=later)
    spool.record(qid, delivered=["c@y.example"])
    listed = stsguard(config_file, "list").stdout.splitlines()
    # The delivered recipient shows where it stands now, not the previous attempt's 451.
    (delivered,) = [line for line in listed if "<c@y.example>" in line]
    assert delivered.split() == ["delivered", "<c@y.example>", "attempts=2"]
    assert "451 4.3.0 try later" in next(line for line in listed if "<b@x.example>" in line)

    deleted = stsguard(config_file, "delete", "--domain", "x.example")
    assert deleted.returncode == 0
    assert deleted.stdout == (
        "deleted: 1 recipient(s) in 1 message(s); 0 message(s) left the queue, "
        "1 still queued for their other recipients (the spool (no relay is running))\n"
    )
    assert [r.status.value for r in spool.get(qid).recipients] == [
        "deleted",
        "delivered",
        "pending",
    ]
    last = stsguard(config_file, "delete", "--domain", "z.example")
    assert last.stdout.startswith("deleted: 1 recipient(s) in 1 message(s); 1 message(s) left")
    assert spool.list() == []


def test_delete_unknown_or_missing_id(config_file: Path, tmp_path: Path) -> None:
    Spool(tmp_path / "state" / "queue")
    unknown = stsguard(config_file, "delete", "ABCDEFGHIJKLMNOP")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().count("\n") == 0
    assert "no queued message 'ABCDEFGHIJKLMNOP'" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    missing = stsguard(config_file, "delete")
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "queue id" in missing.stderr

    junk = stsguard(config_file, "delete", "../../etc/passwd")
    assert junk.returncode != 0
    assert "Traceback" not in junk.stderr


def test_a_reader_that_goes_away_is_no_traceback(config_file: Path, tmp_path: Path) -> None:
    """`stsguard queue list | head -1`: the pipe closes early; stop quietly, as Unix tools do."""
    spool = Spool(tmp_path / "state" / "queue")
    for n in range(3):
        spool.put("a@example.net", [f"b{n}@example.org"], b"x\r\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "queue", "list", "--config", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 141
    assert "Traceback" not in err
