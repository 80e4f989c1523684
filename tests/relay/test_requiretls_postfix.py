"""REQUIRETLS behind a real Postfix (docs/requiretls.md, `[relay].requiretls_loopback`): Postfix
3.11 marks a message it received with REQUIRETLS by a ``Require-TLS-ESMTP: yes`` header so the
request survives a hop without the parameter; Debian's Postfix (3.7 here) relays such a message
unchanged to stsguard over plaintext loopback, and stsguard takes the header as the parameter."""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.mx import CertKind, LabMx
from lab.postfix import PostfixInstance, private_postfix
from lab.world import LabWorld, free_port, wait_until
from relay.app import Relay

pytestmark = pytest.mark.skipif(
    shutil.which("postfix") is None or os.geteuid() != 0,
    reason="needs Debian's postfix and root (.ci/run installs it)",
)

MAIN_CF = """\
myhostname = postfix.upstream.test
relayhost = [127.0.0.1]:{relay_port}
"""


@pytest.fixture
def upstream() -> Iterator[PostfixInstance]:
    """A Postfix instance of its own, stopped and removed at the end."""
    with private_postfix(f"127.0.0.1:{free_port()}") as instance:
        yield instance


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
            upstream.write(MAIN_CF.format(relay_port=config.relay.listen_address[1]))
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
