"""The whole relay in-process: upstream SMTP -> intake -> spool -> delivery -> lab MX."""

from __future__ import annotations

import asyncio
import datetime
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from lab.mx import CertKind, LabMx
from lab.world import LabWorld, wait_until
from relay.app import Relay
from relay.config import Config, config_from_dict


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    async with LabWorld(tmp_path / "world").running() as w:
        yield w


def send(config: Config, rcpt: str, subject: str = "hello") -> str:
    """Send one message to the relay with smtplib; returns the 250 text (queue id inside)."""
    host, port = config.relay.listen_address
    msg = EmailMessage()
    msg["From"] = "alice@upstream.test"
    msg["To"] = rcpt
    msg["Subject"] = subject
    msg.set_content("body line\n")
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.ehlo("upstream.test")
        client.mail("alice@upstream.test")
        client.rcpt(rcpt)
        code, text = client.data(msg.as_bytes(policy=SMTP))
        assert code == 250, (code, text)
        return text.decode()


async def enforce_domain(world: LabWorld, cert: CertKind) -> LabMx:
    mx = await world.add_mx("mx1.example.org", "127.0.0.11", cert=cert)
    world.publish_mx("example.org", [(10, "mx1.example.org")])
    world.publish_policy("example.org", "enforce", ["mx1.example.org"])
    return mx


async def test_sts11_enforce_valid_certificate_delivers_over_tls(
    world: LabWorld, tmp_path: Path
) -> None:
    mx = await enforce_domain(world, CertKind.GOOD)
    relay = Relay(world.relay_config(tmp_path / "state"))
    async with relay.running():
        reply = await asyncio.to_thread(send, relay.config, "bob@example.org")
        assert "queued as" in reply
        await wait_until(lambda: len(mx.messages) == 1)
        await wait_until(lambda: not relay.spool.list())
    received = mx.messages[0]
    assert received.tls is True
    assert received.rcpt_tos == ("bob@example.org",)
    assert b"Subject: hello" in received.data


@pytest.mark.parametrize(
    ("cert", "result_type"),
    [
        (CertKind.EXPIRED, "certificate-expired"),
        (CertKind.WRONG_NAME, "certificate-host-mismatch"),
        (CertKind.UNTRUSTED, "certificate-not-trusted"),
        (CertKind.NONE, "starttls-not-supported"),
    ],
)
async def test_sts11_enforce_bad_tls_is_deferred_not_delivered(
    world: LabWorld, tmp_path: Path, cert: CertKind, result_type: str
) -> None:
    mx = await enforce_domain(world, cert)
    relay = Relay(world.relay_config(tmp_path / "state"))
    async with relay.running():
        await asyncio.to_thread(send, relay.config, "bob@example.org")

        def deferred() -> bool:
            queued = relay.spool.list()
            return bool(queued) and queued[0].recipients[0].attempts >= 1

        await wait_until(deferred)
        queued = relay.spool.list()
    assert mx.messages == []
    assert len(queued) == 1
    assert result_type in queued[0].recipients[0].last_error
    relay.sink.flush()


async def test_testing_mode_delivers_and_records_the_failure(
    world: LabWorld, tmp_path: Path
) -> None:
    mx = await world.add_mx("mx1.example.org", "127.0.0.11", cert=CertKind.EXPIRED)
    world.publish_mx("example.org", [(10, "mx1.example.org")])
    world.publish_policy("example.org", "testing", ["mx1.example.org"])
    relay = Relay(world.relay_config(tmp_path / "state"))
    async with relay.running():
        await asyncio.to_thread(send, relay.config, "bob@example.org")
        await wait_until(lambda: len(mx.messages) == 1)
    relay.sink.flush()
    day = datetime.datetime.now(datetime.UTC).date()
    counts = relay.report_store.counts(day, "example.org")
    failures = [key.result_type for row in counts for key, _ in row.failures]
    assert failures == ["certificate-expired"]


async def test_sts13_bad_primary_good_backup_under_enforce(world: LabWorld, tmp_path: Path) -> None:
    bad = await world.add_mx("mx1.example.org", "127.0.0.11", cert=CertKind.UNTRUSTED)
    good = await world.add_mx("mx2.example.org", "127.0.0.12", cert=CertKind.GOOD)
    world.publish_mx("example.org", [(10, "mx1.example.org"), (20, "mx2.example.org")])
    world.publish_policy("example.org", "enforce", ["*.example.org"])
    relay = Relay(world.relay_config(tmp_path / "state"))
    async with relay.running():
        await asyncio.to_thread(send, relay.config, "bob@example.org")
        await wait_until(lambda: len(good.messages) == 1)
    assert bad.messages == []
    assert good.messages[0].tls is True


async def test_relay_refuses_clients_outside_accept_networks(
    world: LabWorld, tmp_path: Path
) -> None:
    config = world.relay_config(tmp_path / "state", relay={"accept_networks": ["127.0.0.2/32"]})
    relay = Relay(config)

    def attempt() -> int:
        host, port = config.relay.listen_address
        with smtplib.SMTP(host, port, timeout=10) as client:
            client.ehlo("upstream.test")
            client.mail("alice@upstream.test")
            code, _ = client.rcpt("bob@example.org")
            return code

    async with relay.running():
        assert await asyncio.to_thread(attempt) == 550
    assert relay.spool.list() == []


async def test_domain_whose_mx_is_the_relay_itself_bounces_without_looping(
    world: LabWorld, tmp_path: Path
) -> None:
    """Issue 11: a domain whose MX is the relay looped thousands of times in seconds; now the
    recipient bounces with 5.4.6 and nothing is sent to the relay itself."""
    settings = world.relay_settings(tmp_path / "state")
    host, port = settings["relay"]["listen"].rsplit(":", 1)
    settings["delivery"]["port"] = int(port)  # the MX port is the relay's own listen port
    world.dns.set("mx.loop.test", "A", [host])
    world.publish_mx("loop.test", [(10, "mx.loop.test")])
    relay = Relay(config_from_dict(settings))
    async with relay.running():
        # A null sender: the bounce makes no DSN, so the queue empties once the loop is caught.
        code = await asyncio.to_thread(_send_null_sender, host, int(port), "bob@loop.test")
        assert code == 250
        await wait_until(lambda: not relay.spool.list())
        assert relay.metrics.value("stsguard_accepted_total") == 1  # never came back to itself


def _send_null_sender(host: str, port: int, rcpt: str) -> int:
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.ehlo("upstream.test")
        client.mail("")
        client.rcpt(rcpt)
        code, _ = client.data(b"Subject: loop\r\n\r\nbody\r\n")
    return code
