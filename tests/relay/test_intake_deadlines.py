"""Slow clients (issue 20 item 11): a deadline per command line and a minimum DATA rate, as
Postfix 3.7's ``smtpd_per_request_deadline`` and ``smtpd_min_data_rate``. A client that sends a
byte a second is never idle, so before these it held its slot for the whole session_timeout."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab.world import LabWorld, wait_until
from relay.intake.deadlines import COMMAND_DEADLINE, MIN_DATA_RATE, RequestClock, RequestTimer
from tests.relay import intake_client
from tests.relay_process import enforced_example_org, relay_process, write_config

# --- the bookkeeping ---------------------------------------------------------------------------


def test_a_command_line_has_its_deadline_from_its_first_byte() -> None:
    clock = RequestClock(deadline=10, min_data_rate=500)
    assert clock.due(0) == ("", None)  # nothing sent: the idle timeout's business
    clock.command_bytes(b"EHLO x\r\n", 1)
    assert clock.due(100) == ("", None)  # whole lines: nothing to watch
    clock.command_bytes(b"MAIL FR", 100)
    assert clock.due(105) == ("", 5)
    clock.command_bytes(b"OM:<a@b.test>", 109)  # more bytes do not move the deadline
    assert clock.due(110) == (COMMAND_DEADLINE, 0)
    clock.command_bytes(b"\r\nRCPT TO:<", 111)  # a line ended, the next one began
    assert clock.due(112) == ("", 9)
    clock.command_bytes(b"c@d.test>\r\n", 112)
    assert clock.due(500) == ("", None)


def test_data_must_keep_up_the_minimum_rate_with_the_deadline_to_spare() -> None:
    clock = RequestClock(deadline=10, min_data_rate=100)
    clock.data_started(0)
    assert clock.due(4) == ("", 6)
    clock.data_bytes(1000, 4)  # 10 s of credit, but never more than the deadline
    assert clock.data_budget == 10
    assert clock.due(13) == ("", 1)
    clock.data_bytes(1, 13.5)  # one byte a second earns 0.01 s a second
    assert clock.due(14.5) == (MIN_DATA_RATE, 0)
    clock.data_ended()
    assert clock.due(100) == ("", None)


def test_no_data_rate_check_when_the_rate_is_0() -> None:
    clock = RequestClock(deadline=10, min_data_rate=0)
    clock.data_started(0)
    clock.data_bytes(1, 5)
    assert clock.due(1000) == ("", None)


# About a megabyte in 76-character lines: a normal client at full speed is never cut.
BODY = (b"z" * 76 + b"\r\n") * 13_000

SLOW_COMMAND, SLOW_DATA = 20, 10

# --- a real relay ---------------------------------------------------------------------------


def trickle(sock: socket.socket, data: bytes, pause: float, until: float) -> bool:
    """Send `data` a byte at a time; False once the relay has closed the connection (or after
    `until` seconds)."""
    end = time.monotonic() + until
    for byte in data:
        if time.monotonic() > end:
            return True
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return False
        time.sleep(pause)
    return True


def cut_off(client: intake_client.Raw, data: bytes) -> tuple[bool, bytes]:
    """Trickle `data` (never finishing within 20 s); (whether the relay still listened at the
    end, what it said until it closed the connection)."""
    client.sock.settimeout(0.01)
    still_open = trickle(client.sock, data, 0.25, 20)
    client.sock.settimeout(20)
    said = client.reply()
    return still_open, said + b"\n" + client.reply()


@pytest.mark.slow
async def test_trickling_clients_are_cut_and_their_slots_freed(tmp_path: Path) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await enforced_example_org(world)
        config_file, port = write_config(
            world,
            tmp_path,
            tlsrpt={"enabled": False},
            relay={
                "command_deadline": "2s",
                "min_data_rate": 500,
                "max_connections_per_ip": SLOW_COMMAND + SLOW_DATA,
            },
        )
        with relay_process(config_file):
            address = ("127.0.0.1", port)

            def up() -> bool:
                try:
                    intake_client.Raw(address, "127.0.0.5", timeout=2).close()
                except OSError:
                    return False
                return True

            await wait_until(up, 30)

            def slow_command() -> tuple[bool, bytes, float]:
                client = intake_client.Raw(address, "127.0.0.5")
                assert client.cmd(b"EHLO slow.test").startswith(b"250")
                started = time.monotonic()
                still_open, said = cut_off(client, b"MAIL FROM:<" + b"x" * 200)
                client.close()
                return still_open, said, time.monotonic() - started

            def slow_data() -> tuple[bool, bytes]:
                client = intake_client.Raw(address, "127.0.0.5")
                for line in (
                    b"EHLO slow.test",
                    b"MAIL FROM:<a@up.test>",
                    b"RCPT TO:<b@example.org>",
                ):
                    assert client.cmd(line).startswith(b"250"), line
                assert client.cmd(b"DATA").startswith(b"354")
                result = cut_off(client, b"Subject: slow\r\n\r\n" + b"y" * 200)
                client.close()
                return result

            def normal() -> None:
                # a whole message, line by line as an MTA sends it, from the same address
                with smtplib.SMTP(*address, timeout=30, source_address=("127.0.0.5", 0)) as c:
                    c.sendmail("a@up.test", ["b@example.org"], b"Subject: ok\r\n\r\n" + BODY)

            # As measured against the relay before: 20 sessions trickling a command, 10 DATA.
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(max_workers=SLOW_COMMAND + SLOW_DATA) as pool:
                commands = [loop.run_in_executor(pool, slow_command) for _ in range(SLOW_COMMAND)]
                datas = [loop.run_in_executor(pool, slow_data) for _ in range(SLOW_DATA)]
                cut_commands = await asyncio.gather(*commands)
                cut_datas = await asyncio.gather(*datas)
            # every slot of 127.0.0.5 was taken by the slow ones; they are free again
            await asyncio.to_thread(normal)
            await wait_until(lambda: len(mx.messages) == 1, 60)
    for open_cmd, said_cmd, seconds in cut_commands:
        assert said_cmd.startswith(b"421 4.4.2"), said_cmd
        assert said_cmd.endswith(b"closing connection\n<closed>")
        assert not open_cmd
        assert seconds < 15
    for open_data, said_data in cut_datas:
        assert said_data.startswith(b"421 4.4.2"), said_data
        assert said_data.endswith(b"closing connection\n<closed>")
        assert not open_data
    log = (config_file.parent / "relay.log").read_text()
    assert log.count('"limit": "command_deadline"') == SLOW_COMMAND
    assert log.count('"limit": "min_data_rate"') == SLOW_DATA


def test_a_line_thrown_away_behind_starttls_has_no_deadline() -> None:
    loop = asyncio.new_event_loop()
    try:
        cut: list[str] = []
        timer = RequestTimer(loop, RequestClock(deadline=10, min_data_rate=500), cut.append)
        timer.received(b"STARTTLS\r\n\x16\x03\x01")  # a ClientHello sent without waiting
        assert timer.clock.due(loop.time())[1] is not None
        timer.line_discarded()
        assert timer.clock.due(loop.time() + 100) == ("", None)
        timer.cancel()
        assert cut == []
    finally:
        loop.close()
