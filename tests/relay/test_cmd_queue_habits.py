"""The queue the Postfix way: `queue summary` (qshape), `queue show --body` (postcat),
`queue delete -` (postsuper -d -). Pure table tests for the shape, subprocesses for the CLI."""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from relay.cli.queue_shape import BUCKETS, age_column, queue_shape, shape_lines
from relay.queue.spool import QueuedMessage, Recipient, RecipientState, Spool
from tests.cli import ROOT, run_cli
from tests.relay.test_cli_main import free_port
from tests.relay_process import start_relay

NOW = 1_800_000_000.0


def message(queue_id: str, age_minutes: float, *rcpts: str, held: str = "") -> QueuedMessage:
    return QueuedMessage(
        id=queue_id,
        mail_from="a@example.net",
        recipients=(
            *(Recipient(r) for r in rcpts),
            Recipient("done@example.org", status=RecipientState.DELIVERED),
        ),
        received_at=NOW - age_minutes * 60,
        size=10,
        held=held,
    )


@pytest.mark.parametrize(
    ("minutes", "column"), [(0, 0), (5, 0), (5.1, 1), (1280, 8), (1281, 9), (10_000, 9)]
)
def test_age_columns_are_qshapes(minutes: float, column: int) -> None:
    assert age_column(minutes * 60) == column
    assert len(BUCKETS) == 9


def test_shape_counts_a_message_once_per_pending_domain() -> None:
    shape = queue_shape(
        [
            message("A", 1, "x@example.com", "y@example.com", "z@example.net"),
            message("B", 30, "x@example.com"),
            message("C", 3000, "x@Example.NET."),
            message("D", 1, "x@example.com", held="by stsguard queue hold"),
        ],
        NOW,
    )
    assert [(r.domain, r.counts[0], r.counts[3], r.counts[9], r.total) for r in shape.rows] == [
        ("example.com", 1, 1, 0, 2),
        ("example.net", 1, 0, 1, 2),
    ]  # example.org's recipient is delivered: not counted
    assert shape.held == 1
    lines = shape_lines(shape)
    assert lines[0].split() == ["T", *map(str, BUCKETS), "1280+"]
    assert lines[1].split() == ["TOTAL", "4", "2", "0", "0", "1", "0", "0", "0", "0", "0", "1"]
    assert lines[-1].startswith("held: 1 message(s)")
    senders = queue_shape([message("A", 1, "x@example.com"), message("E", 1)], NOW, by_sender=True)
    assert [(r.domain, r.total) for r in senders.rows] == [("example.net", 1)]  # E: nothing pending
    bounce = replace(message("F", 1, "x@example.com"), mail_from="")
    assert queue_shape([bounce], NOW, by_sender=True).rows[0].domain == "<> (bounces)"
    empty = shape_lines(queue_shape([], NOW))
    assert empty[1].split() == ["TOTAL", *["0"] * 11]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "stsguard.toml"
    path.write_text(f'[relay]\nstate_dir = "{tmp_path / "state"}"\n')
    return path


def test_summary_show_body_and_delete_from_stdin(config_file: Path, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "state" / "queue")
    body = b"Subject: hello\r\nMessage-ID: <1@example.net>\r\n\r\nthe body line\r\n"
    first = spool.put("a@example.net", ["b@example.org", "c@example.com"], body)
    second = spool.put("a@example.net", ["d@example.org"], b"Subject: two\r\n\r\nx\r\n")
    third = spool.put("a@example.net", ["e@example.org"], b"Subject: three\r\n\r\ny\r\n")

    summary = run_cli("queue", "summary", "--config", str(config_file))
    assert summary.returncode == 0, summary.stderr
    rows = {line.split()[0]: line.split()[1] for line in summary.stdout.splitlines()[1:3]}
    assert rows == {"TOTAL": "4", "example.org": "3"}
    shaped = json.loads(run_cli("queue", "summary", "--json", "--config", str(config_file)).stdout)
    assert shaped["domains"][1] == {
        "domain": "example.com",
        "messages": 1,
        "by_age": [1] + [0] * 9,
    }

    shown = run_cli("queue", "show", first, "--body", "--config", str(config_file))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.endswith(
        "*** message (header and body) ***\nSubject: hello\nMessage-ID: <1@example.net>\n\n"
        "the body line\n"
    )
    as_json = json.loads(
        run_cli("queue", "show", first, "--body", "--json", "--config", str(config_file)).stdout
    )
    assert as_json["message"] == body.decode()
    bad = run_cli("queue", "list", "--body", "--config", str(config_file))
    assert (bad.returncode, bad.stderr) == (2, "stsguard: error: queue list: --body is for show\n")

    deleted = subprocess.run(
        [sys.executable, "-m", "relay.cli", "queue", "delete", "-", "--config", str(config_file)],
        input=f"{first}\n{third}\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.startswith("deleted: 2 message(s)")
    assert [m.id for m in spool.list()] == [second]
    mixed = run_cli("queue", "delete", "-", second, "--config", str(config_file))
    assert mixed.returncode == 2
    assert "- (ids from stdin) must be the only id" in mixed.stderr


def relay_config(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "relay.toml"
    path.write_text(
        f'[relay]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{tmp_path / "state"}"\n'
        'hostname = "relay.example.net"\nlog_format = "json"\n'
        '[delivery]\nretry_initial = "1h"\nretry_max = "2h"\n'
        '[tlsrpt]\nenabled = false\n[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = "1s"\n'
    )
    return path, port


def attempts(spool: Spool) -> dict[str, int]:
    return {m.id: max(r.attempts for r in m.recipients) for m in spool.list()}


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_flush_some_and_delete_by_sender_on_a_running_relay(tmp_path: Path) -> None:
    """`queue flush ID` / `flush --domain D` try only those now (postqueue -i / -s);
    `delete --sender S` drops that sender's mail. Every destination fails here (no DNS)."""
    config, port = relay_config(tmp_path)
    relay = start_relay(config)
    try:
        wait_for(lambda: (tmp_path / "state" / "control.sock").exists(), "relay started")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.net", ["x@example.org"], b"Subject: 1\r\n\r\none\r\n")
            client.sendmail("a@example.net", ["y@example.com"], b"Subject: 2\r\n\r\ntwo\r\n")
            client.sendmail("spam@bad.example", ["z@example.com"], b"Subject: 3\r\n\r\nx\r\n")
        spool = Spool(tmp_path / "state" / "queue")
        wait_for(lambda: set(attempts(spool).values()) == {1}, "first attempts")
        first, second, third = (m.id for m in spool.list())

        run = run_cli("queue", "flush", first, "--config", str(config))
        assert (run.returncode, run.stdout) == (0, "flushed: 1 message(s) (the running relay)\n")
        wait_for(lambda: attempts(spool)[first] == 2, "flushed message tried again")
        assert attempts(spool)[second] == attempts(spool)[third] == 1

        run = run_cli("queue", "flush", "--domain", "example.com", "--config", str(config))
        assert run.stdout.startswith("flushed: 2 message(s)"), run.stderr
        wait_for(lambda: attempts(spool)[third] == 2, "the domain's messages tried again")
        assert attempts(spool)[first] == 2

        run = run_cli("queue", "delete", "--sender", "SPAM@bad.example", "--config", str(config))
        assert run.stdout == "deleted: 1 message(s) (the running relay)\n"
        assert [m.id for m in spool.list()] == [first, second]
        unknown = run_cli("queue", "flush", "ABCDEFGHIJKLMNOP", "--config", str(config))
        assert unknown.returncode == 1
        assert "no queued message 'ABCDEFGHIJKLMNOP'" in unknown.stderr
        # postsuper -d - fed a long list: more ids than one request line holds.
        many = [f"NOSUCHID{n:08d}" for n in range(5000)]
        deleted = subprocess.run(
            [sys.executable, "-m", "relay.cli", "queue", "delete", "-", "--config", str(config)],
            input="\n".join([*many[:2400], first, *many[2400:]]),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert deleted.stdout == "deleted: 1 message(s) (the running relay)\n", deleted.stderr
        assert deleted.returncode == 1  # the ids that name nothing, one line each
        assert deleted.stderr.count("no queued message") == 5000
        assert [m.id for m in spool.list()] == [second]
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=60)
    log = (tmp_path / "relay.log").read_text()
    assert '"domain": "example.com"' in log
    assert '"sender": "SPAM@bad.example"' in log

    # No relay: the spool is changed directly, only the named message made due.
    run = run_cli("queue", "flush", second, "--config", str(config))
    assert run.returncode == 1  # nothing goes out until a relay starts
    assert "1 message(s) marked due" in run.stderr
    assert {m.id for m in spool.due(time.time() + 1)} == {second}
    usage = run_cli("queue", "flush", first, "--domain", "x.example", "--config", str(config))
    assert (usage.returncode, usage.stderr) == (
        2,
        "stsguard: error: queue flush: give queue ids or --domain D, not both\n",
    )
