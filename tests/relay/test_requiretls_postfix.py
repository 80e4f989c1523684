"""REQUIRETLS behind a real Postfix (docs/requiretls.md, `[relay].requiretls_loopback`): Postfix
3.11 marks a message it received with REQUIRETLS by a ``Require-TLS-ESMTP: yes`` header so the
request survives a hop without the parameter; Debian's Postfix (3.7 here) relays such a message
unchanged to stsguard over plaintext loopback, and stsguard takes the header as the parameter."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from lab.mx import CertKind, LabMx
from lab.postfix import PostfixInstance
from lab.world import LabWorld, wait_until
from relay.app import Relay
from tests.relay.postfix_upstream import RELAYHOST_CF, needs_postfix

pytestmark = needs_postfix


def _send(port: int, rcpt: str) -> None:
    data = (
        f"From: app@upstream.test\r\nTo: {rcpt}\r\nSubject: {rcpt}\r\n"
        "Require-TLS-ESMTP: yes\r\n\r\nconfidential\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("app@upstream.test", [rcpt], data)


async def test_rt01_postfix_header(tmp_path: Path, upstream: PostfixInstance) -> None:
    port = int(upstream.listen.rpartition(":")[2])
    async with LabWorld(tmp_path / "world").running() as world:
        offering = LabMx.with_cert(world.ca, "mx1.example.org", host="127.0.0.81")
        offering.requiretls = True
        await world.serve_mx(offering)
        world.publish_mx("example.org", [(10, "mx1.example.org")])
        world.publish_policy("example.org", "enforce", ["mx1.example.org"])
        lacking = await world.add_mx("mx1.lacking.test", "127.0.0.82", cert=CertKind.GOOD)
        world.publish_mx("lacking.test", [(10, "mx1.lacking.test")])
        world.publish_policy("lacking.test", "enforce", ["mx1.lacking.test"])
        config = world.relay_config(tmp_path / "state", relay={"requiretls_loopback": True})
        relay = Relay(config)
        async with relay.running():
            upstream.write(RELAYHOST_CF.format(relay_port=config.relay.listen_address[1]))
            upstream.start()
            await asyncio.to_thread(_send, port, "bob@example.org")
            await asyncio.to_thread(_send, port, "carol@lacking.test")
            try:
                await wait_until(lambda: bool(offering.messages), 60)
                # The bounce of the second leaves the queue once its DSN is queued.
                await wait_until(
                    lambda: all(
                        r.address != "carol@lacking.test"
                        for m in relay.spool.list()
                        for r in m.pending
                    ),
                    60,
                )
            except TimeoutError:
                pytest.fail(f"postfix log:\n{upstream.log_tail(30)}")
    [received] = offering.messages
    assert received.requiretls  # MAIL FROM:<...> REQUIRETLS at the MX
    assert received.tls
    assert lacking.messages == []  # 5.7.30: never sent without REQUIRETLS
