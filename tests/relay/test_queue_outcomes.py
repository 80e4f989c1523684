"""The queue manager in a whole relay on a lab world: per-destination scheduling, dead
destinations, delay warnings and no second DSN after a crash. Its own rules (back-off, expiry, one
DSN per message, loops, holds, failed writes) are tested with a fake clock in test_queue_parts."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest

from lab.mx import CertKind, LabMx
from lab.world import LabWorld, wait_until
from relay.app import Relay
from relay.config import Config
from relay.errors import SpoolError
from relay.queue.spool import Spool

SENDER = "alice@upstream.test"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    async with LabWorld(tmp_path / "world").running() as w:
        yield w


async def sender_mx(world: LabWorld) -> LabMx:
    """upstream.test's MX, where the DSNs to SENDER arrive."""
    mx = await world.add_mx("mx.upstream.test", "127.0.0.30", cert=CertKind.GOOD)
    world.publish_mx("upstream.test", [(10, "mx.upstream.test")])
    return mx


def config(world: LabWorld, tmp_path: Path, **delivery: Any) -> Config:
    return world.relay_config(
        tmp_path / "state",
        delivery={"retry_initial": "1s", "retry_max": "2s", **delivery},
        tlsrpt={"enabled": False},
        relay={"stop_timeout": "2s"},
    )


def send(cfg: Config, rcpts: list[str], *, received: int = 0, subject: str = "hi") -> None:
    host, port = cfg.relay.listen_address
    msg = EmailMessage()
    for n in range(received):
        msg["Received"] = f"from hop{n}.test by hop{n + 1}.test; Mon, 1 Dec 2026 00:00:00 +0000"
    msg["From"] = SENDER
    msg["To"] = ", ".join(rcpts[:3])
    msg["Subject"] = subject
    msg.set_content("body\n")
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.sendmail(SENDER, rcpts, msg.as_bytes(policy=SMTP))


def dsn_recipients(data: bytes) -> list[str]:
    return [
        line.split(b";", 1)[1].strip().decode()
        for line in data.split(b"\r\n")
        if line.startswith(b"Final-Recipient:")
    ]


class Tarpit:
    """Accepts TCP connections and never says a word."""

    def __init__(self) -> None:
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(Exception):
            await reader.read()

    @contextlib.asynccontextmanager
    async def running(self, host: str, port: int) -> AsyncIterator[Tarpit]:
        server = await asyncio.start_server(self._serve, host, port)
        try:
            yield self
        finally:
            server.close()
            for writer in self._writers:
                writer.close()


async def test_a_tarpit_destination_does_not_delay_a_healthy_one(
    world: LabWorld, tmp_path: Path
) -> None:
    """Two workers in all, two per destination: ten messages for the tarpit hold at most two
    workers' worth of its own slots... and none of the healthy domain's."""
    tarpit = Tarpit()
    await world.keep(tarpit.running("127.0.0.40", world.mx_port))
    world.dns.set("mx.slow.test", "A", ["127.0.0.40"])
    world.publish_mx("slow.test", [(10, "mx.slow.test")])
    healthy = await world.add_mx("mx.fast.test", "127.0.0.41")
    world.publish_mx("fast.test", [(10, "mx.fast.test")])
    cfg = config(
        world,
        tmp_path,
        workers=3,
        concurrency_per_destination=2,
        command_timeout="120s",
        connect_timeout="120s",
    )
    relay = Relay(cfg)
    async with relay.running():
        for n in range(10):
            await asyncio.to_thread(send, cfg, [f"u{n}@slow.test"])
        await wait_until(lambda: tarpit.connections >= 2, 30)
        await asyncio.to_thread(send, cfg, ["bob@fast.test"])
        await wait_until(lambda: len(healthy.messages) == 1, 30)
        # The tarpit still holds its two slots and no more: its other eight wait unopened.
        assert tarpit.connections == 2
        assert relay.runner.dests.running == 2


@contextlib.contextmanager
def crash_after_the_dsn_is_written() -> Iterator[None]:
    """`Spool.queue_dsn` fails between writing the DSN and marking its recipients: the state a
    kill at the worst moment leaves on disk."""
    real_store = Spool._store
    armed = {"on": False}

    def store(self: Spool, message: Any) -> None:
        if armed["on"]:
            raise SpoolError("killed before the recipients were marked")
        real_store(self, message)

    real_queue_dsn = Spool.queue_dsn

    def queue_dsn(self: Spool, *args: Any, **kwargs: Any) -> Any:
        armed["on"] = True
        try:
            return real_queue_dsn(self, *args, **kwargs)
        finally:
            armed["on"] = False

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Spool, "_store", store)
        patch.setattr(Spool, "queue_dsn", queue_dsn)
        yield


async def test_no_second_dsn_after_a_crash_right_after_the_bounce(
    world: LabWorld, tmp_path: Path
) -> None:
    dsns = await sender_mx(world)
    rejecting = await world.add_mx("mx.reject.test", "127.0.0.43")
    rejecting.rcpt_reply = "550 5.1.1 no such user"
    world.publish_mx("reject.test", [(10, "mx.reject.test")])
    cfg = config(world, tmp_path)
    first = Relay(cfg)
    with crash_after_the_dsn_is_written():
        async with first.running():
            await asyncio.to_thread(send, cfg, ["bob@reject.test"])
            spool = first.spool

            def dsn_written() -> bool:
                return any(m.flags.is_bounce for m in spool.list())

            await wait_until(dsn_written, 30)
    assert dsns.messages == []  # a DSN is not handed to delivery before its original is marked
    [original] = [m for m in Spool(tmp_path / "state" / "queue").list() if not m.flags.is_bounce]
    assert original.dsn_id
    assert original.failed
    second = Relay(cfg)
    async with second.running():
        await wait_until(lambda: len(dsns.messages) >= 1, 30)
        await wait_until(lambda: not second.spool.list(), 30)
        await asyncio.sleep(1)
    assert len(dsns.messages) == 1


async def test_a_dead_destination_is_throttled_as_a_whole(
    world: LabWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens at its MX: after the first attempts fail, the other messages are parked
    without a connection; a successful probe later releases them all."""
    world.dns.set("mx.dead.test", "A", ["127.0.0.46"])
    world.publish_mx("dead.test", [(10, "mx.dead.test")])
    cfg = config(world, tmp_path, concurrency_per_destination=2, retry_initial="2s")
    relay = Relay(cfg)
    tries: list[str] = []
    real = relay.deliverer.deliver

    async def deliver(request: Any) -> Any:
        tries.append(request.queue_id)
        return await real(request)

    monkeypatch.setattr(relay.deliverer, "deliver", deliver)
    async with relay.running():
        for n in range(20):
            await asyncio.to_thread(send, cfg, [f"u{n}@dead.test"])
        await wait_until(lambda: relay.runner.dests.parked_count() >= 15, 30)
        assert len(tries) <= 4  # the first cohort, not 20 attempts
        mx = await world.add_mx("mx.dead.test", "127.0.0.46")  # it comes back
        await wait_until(lambda: len(mx.messages) == 20, 60)
    assert len(set(tries)) == 20


async def test_delay_warning_sends_one_delayed_dsn(world: LabWorld, tmp_path: Path) -> None:
    dsns = await sender_mx(world)
    deferring = await world.add_mx("mx.later.test", "127.0.0.45")
    deferring.rcpt_reply = "451 4.3.0 try later"
    world.publish_mx("later.test", [(10, "mx.later.test")])
    cfg = config(world, tmp_path, delay_warning="2s", retry_max="1s")
    relay = Relay(cfg)
    async with relay.running():
        await asyncio.to_thread(send, cfg, ["bob@later.test"])
        await wait_until(lambda: len(dsns.messages) == 1, 30)

        def attempts() -> int:
            return sum(r.attempts for m in relay.spool.list() for r in m.recipients)

        tried = attempts()
        await wait_until(lambda: attempts() >= tried + 2, 30)  # still retried ...
    assert len(dsns.messages) == 1  # ... and warned once
    unfolded = dsns.messages[0].data.replace(b"\r\n ", b" ")
    assert b"Action: delayed" in unfolded
    assert b"Status: 4.3.0" in unfolded
    [message] = relay.spool.list()
    assert message.warned
    assert message.pending
