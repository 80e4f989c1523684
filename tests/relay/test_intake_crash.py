"""Kill the intake with SIGKILL at random moments while clients send: no 250'd message is lost.

The intake runs as a subprocess (tests/relay/intake_main.py). Several client threads send 200
messages, each with a unique Message-ID, retrying until they get a 250. A killer thread SIGKILLs
and restarts the intake meanwhile. Afterwards every message that got a 250 must be in the spool.
A message whose 250 was lost in the kill may be re-sent and so appear twice: allowed, and counted.
"""

from __future__ import annotations

import collections
import email.parser
import os
import random
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from relay.queue.spool import Spool

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MESSAGES = 200
CLIENTS = 5
MAX_KILLS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class IntakeProcess:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.args = [sys.executable, str(HERE / "intake_main.py"), str(config), str(port)]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == b"ready", f"intake did not start: {line!r}"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


def message(n: int) -> bytes:
    return (
        f"From: sender@example.net\r\nTo: rcpt@example.org\r\nSubject: crash test {n}\r\n"
        f"Message-ID: <crash-{n}@example.net>\r\n\r\n"
    ).encode() + b"body line\r\n" * random.randint(1, 200)


def send_until_accepted(port: int, n: int, accepted: dict[int, str], lost: set[int]) -> None:
    """Retry until a 250; a message whose connection broke after DATA may have been queued."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        client = None
        sent_data = False
        try:
            client = smtplib.SMTP("127.0.0.1", port, timeout=5)
            client.ehlo("crash.test")
            client.mail("sender@example.net")
            client.rcpt("rcpt@example.org")
            sent_data = True
            code, reply = client.data(message(n))
            if code == 250:
                accepted[n] = reply.decode().rsplit(" ", 1)[1]
                return
        except (OSError, smtplib.SMTPException):
            if sent_data:
                lost.add(n)  # the reply may have been lost after the message was queued
            time.sleep(0.01)
        finally:
            if client is not None:
                try:
                    client.quit()
                except (OSError, smtplib.SMTPException):
                    client.close()
    raise AssertionError(f"message {n} never got a 250")


@pytest.mark.slow
def test_intake_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "stsguard.toml"
    config.write_text(f'[relay]\nstate_dir = "{state}"\nlog_level = "warning"\n')
    port = free_port()
    intake = IntakeProcess(config, port, tmp_path / "intake.log")
    intake.start()

    accepted: dict[int, str] = {}
    lost: set[int] = set()
    numbers = list(range(MESSAGES))
    lock = threading.Lock()

    def client_thread() -> None:
        while True:
            with lock:
                if not numbers:
                    return
                n = numbers.pop()
            send_until_accepted(port, n, accepted, lost)

    done = threading.Event()
    kills = 0

    def killer() -> None:
        nonlocal kills
        rng = random.Random()
        while not done.wait(rng.uniform(0.05, 0.3)) and kills < MAX_KILLS:
            intake.kill()
            kills += 1
            intake.start()

    started = time.monotonic()
    clients = [threading.Thread(target=client_thread) for _ in range(CLIENTS)]
    killer_thread = threading.Thread(target=killer)
    try:
        for t in clients:
            t.start()
        killer_thread.start()
        for t in clients:
            t.join(60)
        done.set()
        killer_thread.join(30)
    finally:
        done.set()
        intake.kill()
    elapsed = time.monotonic() - started

    assert len(accepted) == MESSAGES
    spool = Spool(state / "queue")  # runs the crash clean-up, like a restarted relay
    parser = email.parser.BytesHeaderParser()
    found: collections.Counter[int] = collections.Counter()
    for queued in spool.list():
        headers = parser.parsebytes(spool.read_data(queued.id))
        mid = str(headers["Message-ID"])
        found[int(mid.removeprefix("<crash-").split("@")[0])] += 1
    missing = sorted(n for n in accepted if found[n] == 0)
    duplicates = {n: c for n, c in found.items() if c > 1}
    print(
        f"crash test: {kills} kills, {MESSAGES} messages, {len(duplicates)} duplicated "
        f"(all after a lost reply: {set(duplicates) <= lost}), {elapsed:.1f}s"
    )
    assert kills >= 1
    assert missing == [], f"acknowledged but lost: {missing}"
    # Only a message whose reply was lost can be there twice (the client re-sent it).
    assert set(duplicates) <= lost
    # Every acknowledged queue id is the one on disk.
    for queue_id in accepted.values():
        assert spool.get(queue_id).id == queue_id
    assert not list((state / "queue" / "tmp").iterdir())
