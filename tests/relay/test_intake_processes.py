"""`[relay].intake_processes`: `stsguard relay` as a subprocess whose intake runs in child
processes. Mail they accept is delivered by the main process; a child that dies is restarted; the
children go when the relay stops, or is killed; a busy port is still one line and exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.world import LabWorld, wait_until
from relay.intake.process import NICENESS
from tests.relay_process import enforced_example_org, start_relay, write_config

pytestmark = pytest.mark.slow


def log_lines(config_file: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in (config_file.parent / "relay.log").read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def children(config_file: Path) -> dict[int, int]:
    """index -> pid of the newest intake process the relay logged."""
    started = [e for e in log_lines(config_file) if e["event"] == "intake.process_started"]
    return {e["index"]: e["pid"] for e in started}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def send(port: int, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(
            "app@upstream.test",
            ["bob@example.org"],
            f"Subject: m{n}\r\nMessage-ID: <ip-{n}@upstream.test>\r\n\r\nbody {n}\r\n".encode(),
        )


async def test_intake_processes_accept_restart_and_stop(tmp_path: Path) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await enforced_example_org(world)
        config_file, port = write_config(
            world, tmp_path, tlsrpt={"enabled": False}, relay={"intake_processes": 2}
        )
        relay = start_relay(config_file)
        try:
            await wait_until(lambda: len(children(config_file)) == 2, 20)
            await wait_until(lambda: _listening(port), 20)
            await asyncio.gather(*(asyncio.to_thread(send, port, n) for n in range(12)))
            await wait_until(lambda: len(mx.messages) == 12, 30)
            assert all(m.tls for m in mx.messages)
            queued = [e for e in log_lines(config_file) if e["event"] == "intake.queued"]
            assert {e["process"] for e in queued} <= {"intake-1", "intake-2"}
            assert len(queued) == 12  # accepted by the children, none by the main process
            # Delivery comes first when they share a core: the children run 5 nice steps lower.
            for pid in children(config_file).values():
                assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(
                    os.PRIO_PROCESS, relay.pid
                ) + min(NICENESS, 19 - os.getpriority(os.PRIO_PROCESS, relay.pid))

            # A child that dies is replaced, and mail still flows.
            first = children(config_file)
            os.kill(first[1], signal.SIGKILL)
            await wait_until(lambda: children(config_file)[1] != first[1], 20)
            await wait_until(lambda: _listening(port), 20)
            await asyncio.gather(*(asyncio.to_thread(send, port, n) for n in range(12, 18)))
            await wait_until(lambda: len(mx.messages) == 18, 30)
            exited = [e for e in log_lines(config_file) if e["event"] == "intake.process_exited"]
            assert [(e["index"], e["status"]) for e in exited] == [(1, -signal.SIGKILL)]

            # SIGTERM stops the relay and both children.
            now = children(config_file)
            relay.send_signal(signal.SIGTERM)
            assert relay.wait(15) == 0
            assert not any(alive(pid) for pid in now.values())
        finally:
            if relay.poll() is None:
                relay.kill()
                relay.wait()


async def test_children_leave_when_the_main_process_is_killed(tmp_path: Path) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        config_file, _ = write_config(
            world, tmp_path, tlsrpt={"enabled": False}, relay={"intake_processes": 1}
        )
        relay = start_relay(config_file)
        try:
            await wait_until(lambda: len(children(config_file)) == 1, 20)
            [pid] = children(config_file).values()
            await wait_until(lambda: _ready(config_file), 20)
            relay.send_signal(signal.SIGKILL)
            relay.wait()
            # Orphaned, the child sees its notify socket close and stops (reaped by init).
            await wait_until(lambda: not alive(pid), 10)
        finally:
            if relay.poll() is None:
                relay.kill()
                relay.wait()


def test_a_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        config_file = tmp_path / "relay.toml"
        config_file.write_text(
            f'[relay]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{tmp_path / "state"}"\n'
            "intake_processes = 2\n"
        )
        done = subprocess.run(
            [sys.executable, "-m", "relay.cli", "relay", "--config", str(config_file)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 2
    assert "cannot listen on" in done.stderr
    assert "Traceback" not in done.stderr
    assert "intake.process_started" not in done.stderr  # nothing started before the bind


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(3) == b"220"
    except OSError:
        return False


def _ready(config_file: Path) -> bool:
    return any(e["event"] == "relay.started" for e in log_lines(config_file))
