"""A real Postfix with `relayhost` pointing at stsguard delivers through it to a recipient MX.

Postfix runs as its own instance under the test's temporary directory (nothing of the system
instance is used), listening on loopback only; `.ci/run` installs Debian's postfix when missing.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from lab.mx import CertKind
from lab.postfix import PostfixInstance
from lab.world import LabWorld, wait_until
from relay.app import Relay
from tests.relay.postfix_upstream import RELAYHOST_CF, needs_postfix

pytestmark = needs_postfix


def send_to_postfix(port: int) -> None:
    msg = EmailMessage()
    msg["From"] = "app@upstream.test"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "through postfix"
    msg.set_content("hello via postfix and stsguard\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("app@upstream.test", ["bob@example.org"], msg.as_bytes(policy=SMTP))


async def test_postfix_relayhost_delivers_through_stsguard(
    tmp_path: Path, upstream: PostfixInstance
) -> None:
    port = int(upstream.listen.rpartition(":")[2])
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await world.add_mx("mx1.example.org", "127.0.0.11", cert=CertKind.GOOD)
        world.publish_mx("example.org", [(10, "mx1.example.org")])
        world.publish_policy("example.org", "enforce", ["mx1.example.org"])
        relay = Relay(world.relay_config(tmp_path / "state"))
        async with relay.running():
            upstream.write(RELAYHOST_CF.format(relay_port=relay.config.relay.listen_address[1]))
            upstream.start()
            await asyncio.to_thread(send_to_postfix, port)
            try:
                await wait_until(lambda: bool(mx.messages), 60)
            except TimeoutError:
                pytest.fail(f"nothing reached the MX; postfix log:\n{upstream.log_tail(30)}")
    received = mx.messages[0]
    assert received.tls is True
    assert received.rcpt_tos == ("bob@example.org",)
    assert b"through postfix" in received.data
    assert b"postfix.upstream.test" in received.data  # Postfix's Received: header came along
