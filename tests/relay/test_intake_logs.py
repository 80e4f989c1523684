"""Log lines of a running relay that join up the Postfix way (issue 20 item 5): one
``intake.queued`` line per message naming the client and its port, the Message-ID and the
upstream's queue id; aiosmtpd's own per-command lines only at ``debug``."""

from __future__ import annotations

import asyncio
import json
import re
import smtplib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lab.world import LabWorld, wait_until
from relay.intake.trace import VALUE_LIMIT, MessageTrace, message_trace
from tests.relay_process import enforced_example_org, relay_process, write_config

UPSTREAM = (
    b"Received: from app.upstream.test (app.upstream.test [192.0.2.7])\r\n"
    b"\tby mail.upstream.test (Postfix) with ESMTP id 4XyzAbC12\r\n"
    b"\tfor <bob@example.org>; Mon,  7 Dec 2026 09:00:00 +0000 (UTC)\r\n"
)


def message(n: int) -> bytes:
    return UPSTREAM + f"Message-ID: <m{n}@upstream.test>\r\nSubject: {n}\r\n\r\nbody\r\n".encode()


def relay_log(config_file: Path) -> list[dict[str, Any]]:
    raw = (config_file.parent / "relay.log").read_text(errors="replace").splitlines()
    return [json.loads(line) for line in raw if line.startswith("{")]


@pytest.mark.slow
async def test_one_queued_line_per_message_and_no_aiosmtpd_chatter(tmp_path: Path) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await enforced_example_org(world)
        config_file, port = write_config(world, tmp_path, tlsrpt={"enabled": False})
        with relay_process(config_file):

            def send() -> list[int]:
                ports = []
                for session in range(2):
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                        ports.append(client.sock.getsockname()[1])
                        for n in range(3):
                            client.sendmail(
                                "app@upstream.test", ["bob@example.org"], message(3 * session + n)
                            )
                return ports

            await wait_until(lambda: (config_file.parent / "relay.log").exists(), 30)
            await wait_until(lambda: "intake.listening" in str(relay_log(config_file)), 30)
            ports = await asyncio.to_thread(send)
            await wait_until(lambda: len(mx.messages) == 6, 60)
    lines = relay_log(config_file)
    [started] = [e for e in lines if e["event"] == "relay.started"]
    assert started["listen"] == f"127.0.0.1:{port}"  # not a (host, port) list
    queued = [e for e in lines if e["event"] == "intake.queued"]
    assert sorted(e["message_id"] for e in queued) == [f"<m{n}@upstream.test>" for n in range(6)]
    assert {e["upstream_queue_id"] for e in queued} == {"4XyzAbC12"}
    assert {(e["client"], e["client_port"]) for e in queued} == {("127.0.0.1", p) for p in ports}
    assert {(e["mail_from"], e["rcpt_count"]) for e in queued} == {("app@upstream.test", 1)}
    # aiosmtpd's lines ("('127.0.0.1', 41234) >> b'MAIL FROM:...'") are debug: none at info.
    loggers = Counter(e.get("logger") for e in lines if e["event"] == "library.log")
    assert loggers["mail.log"] == 0, loggers
    # Everything the intake says at info about these messages is the one line each.
    # (An intake process, which `intake_processes = "auto"` starts on two cores, says it started.)
    intake = Counter(e["event"] for e in lines if e["event"].startswith("intake."))
    intake.pop("intake.process_started", None)
    assert intake == Counter({"intake.queued": 6, "intake.listening": 1}), intake


@pytest.mark.parametrize(
    ("data", "trace"),
    [
        (message(1), MessageTrace("<m1@upstream.test>", "4XyzAbC12")),
        (b"Subject: x\r\n\r\nMessage-ID: <in-body@x>\r\n", MessageTrace()),
        (  # folded values; Postfix's local pickup line ("from userid 0") names an id too
            b"Received: by host.test (Postfix, from userid 0)\r\n\tid 3ABC9; Mon\r\n"
            b"message-id:\r\n <folded@x>\r\n\r\n",
            MessageTrace("<folded@x>", "3ABC9"),
        ),
        (b"Received: from a by b; Mon, 7 Dec 2026\r\n\r\n", MessageTrace()),
        (  # only the topmost Received: is the upstream's
            b"Received: from a by b; Mon\r\nReceived: by c with SMTP id OLDER; Sun\r\n\r\n",
            MessageTrace(),
        ),
        (b"Message-ID: <a\x00b\x1b[31m@x>\r\n\r\n", MessageTrace("<a b [31m@x>")),
        (
            b"Message-ID: <" + b"x" * 5000 + b">\r\n\r\n",
            MessageTrace("<" + "x" * (VALUE_LIMIT - 1)),
        ),
    ],
)
def test_message_trace(data: bytes, trace: MessageTrace) -> None:
    assert message_trace(data) == trace


# What a Python repr looks like in a key=value line: a tuple, bytes, None.
PYTHON_REPR = re.compile(r"""=\(|=b'|=b"|=None\b|\('|"\('|\[\(""")


@pytest.mark.slow
async def test_journal_lines_of_a_real_run_carry_no_python_reprs(tmp_path: Path) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await enforced_example_org(world)
        config_file, port = write_config(
            world, tmp_path, tlsrpt={"enabled": False}, relay={"log_format": "journal"}
        )
        log = config_file.parent / "relay.log"
        with relay_process(config_file):
            await wait_until(lambda: log.exists() and "relay.started" in log.read_text(), 30)

            def send() -> None:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                    client.sendmail(
                        "app@upstream.test", ["bob@example.org", "x@nowhere.test"], message(1)
                    )
                    client.sendmail("app@upstream.test", ["bob@example.org"], message(2))

            await asyncio.to_thread(send)
            await wait_until(lambda: len(mx.messages) == 2, 60)
            await wait_until(lambda: "queue.bounced" in log.read_text(), 30)
    lines = log.read_text().splitlines()
    assert lines
    for line in lines:
        assert re.match(r"<[0-7]>[a-z_]+\.[a-z_.]+( |$)", line), line
        assert not PYTHON_REPR.search(line), line
    assert f" listen=127.0.0.1:{port} " in next(x for x in lines if "relay.started" in x)
