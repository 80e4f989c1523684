"""What the intake tests share: a raw SMTP client that sends exactly the bytes it is given, and
the `start_intake` fixture (an `Intake` on a free loopback port, stopped after the test)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from relay.config import Config, RelayConfig
from relay.intake.server import Intake
from relay.queue.spool import Spool


class Raw:
    """A line-oriented SMTP client for what smtplib will not send; `source` binds the client
    address (127.0.0.2 is outside an ``accept_networks`` of 127.0.0.1/32)."""

    def __init__(
        self, address: tuple[str, int], source: str | None = None, timeout: float = 30
    ) -> None:
        bind = (source, 0) if source else None
        self.sock = socket.create_connection(address, timeout=timeout, source_address=bind)
        self.buf = b""
        self.banner = self.reply()

    def reply(self) -> bytes:
        """The next reply, its lines joined by LF; ``<closed>`` last when the server closed."""
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return b"\n".join([*lines, b"<closed>"])
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return b"\n".join(lines)

    def cmd(self, text: bytes) -> bytes:
        self.sock.sendall(text + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        assert self.cmd(b"STARTTLS").startswith(b"220")
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def close(self) -> None:
        self.sock.close()


def make_config(tmp_path: Path, **relay: Any) -> Config:
    relay.setdefault("hostname", "relay.test")
    relay.setdefault("state_dir", tmp_path)
    return Config(relay=RelayConfig(**relay))


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "queue")


@pytest.fixture
async def start_intake(tmp_path: Path, spool: Spool) -> AsyncIterator[Callable[..., Any]]:
    """``await start_intake(spool=None, **relay_keys)``: a running `Intake` on 127.0.0.1."""
    intakes: list[Intake] = []

    async def start(spool_: Spool | None = None, **relay: Any) -> Intake:
        intake = Intake(make_config(tmp_path, **relay), spool_ or spool, listen=("127.0.0.1", 0))
        await intake.start()
        intakes.append(intake)
        return intake

    yield start
    for intake in intakes:
        await intake.stop()
