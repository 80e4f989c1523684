"""`stsguard relay` as a process: SIGTERM lets a slow delivery finish (delivered once, not again
after a restart), SIGHUP reloads the config (an invalid file keeps the old one), and `stsguard
queue` talks to the running relay."""

from __future__ import annotations

import asyncio
import json
import signal
import smtplib
import subprocess
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from lab.mx import LabMx
from lab.world import LabWorld, to_toml, wait_until
from relay.queue.spool import Spool
from tests.cli import run_cli_async
from tests.relay_process import start_relay, write_config

pytestmark = pytest.mark.slow


class SlowMx(LabMx):
    """Takes `delay` seconds to answer the final dot."""

    delay = 4.0
    in_data = 0

    def make_handler(self) -> Any:
        handler = super().make_handler()
        real = handler.handle_DATA
        mx = self

        async def handle_DATA(server: SMTPServer, session: Session, envelope: Envelope) -> str:
            mx.in_data += 1
            await asyncio.sleep(mx.delay)
            return await real(server, session, envelope)

        handler.handle_DATA = handle_DATA  # type: ignore[method-assign]
        return handler


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    async with LabWorld(tmp_path / "world").running() as w:
        yield w


def send(port: int, rcpt: str, *, received: int = 0) -> None:
    msg = EmailMessage()
    for n in range(received):
        msg["Received"] = f"from hop{n}.test by hop{n + 1}.test; Mon, 1 Dec 2026 00:00:00 +0000"
    msg["From"] = "alice@upstream.test"
    msg["To"] = rcpt
    msg["Subject"] = "signals"
    msg.set_content("body\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@upstream.test", [rcpt], msg.as_bytes(policy=SMTP))


def log_events(directory: Path) -> list[dict[str, Any]]:
    events = []
    for line in (directory / "relay.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def stop(relay: subprocess.Popen[bytes], timeout: float = 30) -> int:
    relay.send_signal(signal.SIGTERM)
    try:
        return relay.wait(timeout)
    except subprocess.TimeoutExpired:
        relay.kill()
        raise


async def test_sigterm_lets_a_slow_delivery_finish_and_it_is_not_sent_again(
    world: LabWorld, tmp_path: Path
) -> None:
    mx = SlowMx.with_cert(world.ca, "mx.slow.test", host="127.0.0.50")
    await world.keep(mx.running(world.mx_port))
    world.dns.set("mx.slow.test", "A", ["127.0.0.50"])
    world.publish_mx("slow.test", [(10, "mx.slow.test")])
    config_file, port = write_config(
        world, tmp_path, tlsrpt={"enabled": False}, relay={"stop_timeout": "30s"}
    )
    relay = start_relay(config_file)
    try:
        await wait_until(lambda: _accepts(port), 30)
        await asyncio.to_thread(send, port, "bob@slow.test")
        await wait_until(lambda: mx.in_data >= 1, 30)
        status = await asyncio.to_thread(stop, relay)  # the MX still sits on the final dot
    finally:
        if relay.poll() is None:
            relay.kill()
    assert status == 0
    assert len(mx.messages) == 1
    events = {e["event"]: e for e in log_events(tmp_path)}
    assert events["relay.stopping"]["deliveries_finished"] is True
    assert Spool(tmp_path / "state" / "queue").list() == []
    relay = start_relay(config_file)  # nothing left to send again
    try:
        await wait_until(lambda: _accepts(port), 30)
        await asyncio.sleep(2)
    finally:
        await asyncio.to_thread(stop, relay)
    assert len(mx.messages) == 1


async def test_sighup_reloads_and_an_invalid_file_keeps_the_old_config(
    world: LabWorld, tmp_path: Path
) -> None:
    mx = await world.add_mx("mx.hup.test", "127.0.0.51")
    world.publish_mx("hup.test", [(10, "mx.hup.test")])
    dsns = await world.add_mx("mx.upstream.test", "127.0.0.52")
    world.publish_mx("upstream.test", [(10, "mx.upstream.test")])
    settings = world.relay_settings(
        tmp_path / "state",
        relay={"log_level": "info", "log_format": "json"},
        tlsrpt={"enabled": False},
    )
    config_file = tmp_path / "relay.toml"
    config_file.write_text(to_toml(settings))
    port = int(settings["relay"]["listen"].rpartition(":")[2])
    relay = start_relay(config_file)
    try:
        await wait_until(lambda: _accepts(port), 30)
        await asyncio.to_thread(send, port, "bob@hup.test", received=3)
        await wait_until(lambda: len(mx.messages) == 1, 30)

        settings["delivery"]["max_hops"] = 2
        config_file.write_text(to_toml(settings))
        relay.send_signal(signal.SIGHUP)
        await wait_until(lambda: _has(tmp_path, "relay.reloaded"), 30)
        await asyncio.to_thread(send, port, "bob@hup.test", received=3)  # now a loop: 5.4.6
        await wait_until(lambda: len(dsns.messages) == 1, 30)
        assert len(mx.messages) == 1

        config_file.write_text("[delivery]\nmax_hops = 'lots'\n")
        relay.send_signal(signal.SIGHUP)
        await wait_until(lambda: _has(tmp_path, "relay.reload_failed"), 30)
        assert relay.poll() is None
        await asyncio.to_thread(send, port, "bob@hup.test", received=3)  # old config: bounced
        await wait_until(lambda: len(dsns.messages) == 2, 30)
    finally:
        status = await asyncio.to_thread(stop, relay)
    assert status == 0
    failed = [e for e in log_events(tmp_path) if e["event"] == "relay.reload_failed"]
    assert len(failed) == 1
    assert "[delivery].max_hops" in failed[0]["error"]


async def test_queue_commands_steer_a_running_relay(world: LabWorld, tmp_path: Path) -> None:
    later = await world.add_mx("mx.later.test", "127.0.0.53")
    later.rcpt_reply = "451 4.3.0 try later"
    world.publish_mx("later.test", [(10, "mx.later.test")])
    config_file, port = write_config(
        world, tmp_path, tlsrpt={"enabled": False}, delivery={"retry_initial": "1h"}
    )
    conf = ("--config", str(config_file))
    relay = start_relay(config_file)
    try:
        await wait_until(lambda: _accepts(port), 30)
        for rcpt in ("a@later.test", "b@later.test", "c@later.test"):
            await asyncio.to_thread(send, port, rcpt)
        spool = Spool(tmp_path / "state" / "queue")
        await wait_until(lambda: sum(m.recipients[0].attempts for m in spool.list()) == 3, 30)
        first, second, third = sorted(spool.list(), key=lambda m: m.recipients[0].address)

        status, out, err = await run_cli_async("queue", "hold", first.id, *conf)
        assert (status, err) == (0, "")
        assert "held: 1 message(s) (the running relay)" in out
        status, out, _ = await run_cli_async("queue", "show", first.id, *conf)
        assert status == 0
        assert "held:        held by stsguard queue hold" in out
        assert "451 4.3.0 try later" in out
        assert "Subject: signals" in out

        def attempts() -> dict[str, int]:
            return {m.id: m.recipients[0].attempts for m in spool.list()}

        status, out, _ = await run_cli_async("queue", "flush", *conf)
        assert status == 0
        await wait_until(lambda: attempts()[second.id] == attempts()[third.id] == 2, 30)
        await asyncio.sleep(1)
        assert attempts()[first.id] == 1  # held: not tried

        status, out, _ = await run_cli_async("queue", "release", first.id, *conf)
        assert status == 0
        await wait_until(lambda: attempts()[first.id] == 2, 30)

        status, out, _ = await run_cli_async(
            "queue", "delete", "--recipient", "b@later.test", *conf
        )
        assert status == 0
        assert "deleted: 1 recipient(s) in 1 message(s); 1 message(s) left the queue" in out
        status, out, _ = await run_cli_async("queue", "delete", third.id, *conf)
        assert status == 0
        assert {m.id for m in spool.list()} == {first.id}

        status, _, err = await run_cli_async("queue", "hold", "ABCDEFGHIJKLMNOP", *conf)
        assert status == 1
        assert "no queued message 'ABCDEFGHIJKLMNOP'" in err
        status, _, err = await run_cli_async("queue", "delete", *conf)
        assert status == 2
    finally:
        await asyncio.to_thread(stop, relay)
    events = log_events(tmp_path)
    logged = {e["event"] for e in events}
    assert {"queue.held", "queue.released", "queue.deleted", "queue.flushed"} <= logged
    # Every message that left the queue by a delete has its `removed` line, as with postsuper.
    removed = {e["queue_id"]: e for e in events if e["event"] == "queue.removed"}
    assert {second.id, third.id} <= removed.keys()
    assert removed[third.id]["by"] == "stsguard queue delete"
    assert removed[third.id]["nrcpt"] == 1
    assert second.id not in {m.id for m in Spool(tmp_path / "state" / "queue").list()}

    status, _, err = await run_cli_async("queue", "flush", *conf)
    assert status == 1
    assert "no relay is running" in err


def _accepts(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=2):
            return True
    except OSError:
        return False


def _has(directory: Path, event: str) -> bool:
    return any(e["event"] == event for e in log_events(directory))
