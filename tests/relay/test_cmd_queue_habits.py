"""The queue the Postfix way: `queue summary` (qshape), `queue show --body` (postcat),
`queue delete -` (postsuper -d -). Pure table tests for the shape, subprocesses for the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli.queue_shape import BUCKETS, age_column, queue_shape, shape_lines
from relay.queue.spool import QueuedMessage, Recipient, RecipientState, Spool
from tests.cli import ROOT, run_cli

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
