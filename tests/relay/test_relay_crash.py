"""Never lose mail: `stsguard relay` as a subprocess, SIGKILLed during intake and delivery (after
every ~20 messages that reached the MX, at a random point within that) and restarted; every
message that got a 250 reaches the recipient MX."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import smtplib
import threading
import time
from collections import Counter
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from lab.world import LabWorld, wait_until
from tests.relay_process import enforced_example_org, start_relay, stop_relay, write_config

MESSAGES = 200
SENDERS = 5
MAX_KILLS = 8  # then the relay is left running so the senders can finish
# Kill after every KILL_EVERY messages that reached the MX (plus a random few), so the number of
# kills depends on progress, not on how fast this machine is.
KILL_EVERY = 20
PROGRESS_TIMEOUT = 60.0

pytestmark = pytest.mark.slow


class Upstream:
    """Client threads that send numbered messages and keep those that got a 250."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acked: set[str] = set()
        self.lock = threading.Lock()
        self.todo = list(range(MESSAGES))

    def _message(self, n: int) -> tuple[str, bytes]:
        msg_id = f"<crash-{n}@upstream.test>"
        msg = EmailMessage()
        msg["From"] = "app@upstream.test"
        msg["To"] = "bob@example.org"
        msg["Subject"] = f"crash test {n}"
        msg["Message-ID"] = msg_id
        msg.set_content(f"message {n}\n")
        return msg_id, msg.as_bytes(policy=SMTP)

    def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            with self.lock:
                if not self.todo:
                    return
                n = self.todo.pop()
            msg_id, data = self._message(n)
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as client:
                    client.sendmail("app@upstream.test", ["bob@example.org"], data)
                with self.lock:
                    self.acked.add(msg_id)
            except (OSError, smtplib.SMTPException):
                # No 250 seen (the relay died): send it again later, as an MTA would.
                with self.lock:
                    self.todo.append(n)
                time.sleep(0.05)


@pytest.mark.parametrize("intake_processes", [0, 1])
async def test_kill_9_during_intake_and_delivery_loses_nothing(
    tmp_path: Path, intake_processes: int
) -> None:
    """With intake_processes = 1 the SIGKILL hits the main process; its intake child, orphaned,
    stops on its own, and the restarted relay binds the port again."""
    rng = random.Random(8461 + intake_processes)
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await enforced_example_org(world)
        config_file, port = write_config(
            world,
            tmp_path,
            delivery={"retry_initial": "1s", "retry_max": "2s"},
            tlsrpt={"enabled": False},
            relay={"intake_processes": intake_processes},
        )
        upstream = Upstream(port)
        relay = start_relay(config_file)
        senders = [
            asyncio.create_task(asyncio.to_thread(upstream.run, time.monotonic() + 120))
            for _ in range(SENDERS)
        ]
        kills = 0
        try:
            while kills < MAX_KILLS:
                target = KILL_EVERY * (kills + 1) + rng.randrange(KILL_EVERY // 2)
                if target >= MESSAGES:
                    break
                await wait_until(lambda n=target: len(mx.messages) >= n, PROGRESS_TIMEOUT)
                relay.send_signal(signal.SIGKILL)
                relay.wait()
                kills += 1
                relay = start_relay(config_file)
            await asyncio.gather(*senders)
            assert len(upstream.acked) == MESSAGES, "senders gave up before every 250"

            def all_arrived() -> bool:
                arrived = {_message_id(m.data) for m in mx.messages}
                return upstream.acked <= arrived

            with contextlib.suppress(TimeoutError):
                await wait_until(all_arrived, 60)
        finally:
            stop_relay(relay, 10)
    arrived = Counter(_message_id(m.data) for m in mx.messages)
    lost = upstream.acked - set(arrived)
    duplicates = sum(n - 1 for n in arrived.values() if n > 1)
    print(f"kills={kills} acked={len(upstream.acked)} delivered={len(arrived)} dup={duplicates}")
    assert kills >= 3
    assert not lost, f"{len(lost)} messages got a 250 and never arrived: {sorted(lost)[:5]}"
    assert all(m.tls for m in mx.messages)


def _message_id(data: bytes) -> str:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""
