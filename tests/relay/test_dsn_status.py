"""DSN status codes of a whole relay for TLS failures (issue 20 item 10): RFC 3463 codes by
cause, where every TLS failure said 4.0.0 in a delay warning and 5.0.0 in the bounce."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
from pathlib import Path

import pytest

from lab.mx import CertKind
from lab.world import LabWorld, wait_until
from relay.app import Relay

pytestmark = pytest.mark.slow

SENDER = "alice@upstream.test"


def statuses(dsn: bytes) -> list[tuple[str, str, str]]:
    """(recipient, action, status) of each per-recipient block of a DSN."""
    found = []
    for part in email.message_from_bytes(dsn, policy=email.policy.compat32).walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        assert isinstance(payload, list)
        for block in payload[1:]:
            rcpt = str(block["Final-Recipient"]).split(";", 1)[1].strip()
            found.append((rcpt, str(block["Action"]), str(block["Status"])))
    return sorted(found)


async def test_tls_failures_get_x_7_codes_in_the_delay_warning_and_the_bounce(
    tmp_path: Path,
) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        dsns = await world.add_mx("mx.upstream.test", "127.0.0.30", cert=CertKind.GOOD)
        world.publish_mx("upstream.test", [(10, "mx.upstream.test")])
        await world.add_mx("mx.expired.test", "127.0.0.31", cert=CertKind.EXPIRED)
        await world.add_mx("mx.plain.test", "127.0.0.32", cert=CertKind.NONE)
        for domain, mx in (("expired.test", "mx.expired.test"), ("plain.test", "mx.plain.test")):
            world.publish_mx(domain, [(10, mx)])
            world.publish_policy(domain, "enforce", [mx])
        cfg = world.relay_config(
            tmp_path / "state",
            delivery={
                "retry_initial": "1s",
                "retry_max": "1s",
                "delay_warning": "2s",
                "queue_lifetime": "5s",
            },
            tlsrpt={"enabled": False},
            relay={"stop_timeout": "2s"},
        )
        relay = Relay(cfg)
        async with relay.running():

            def send() -> None:
                with smtplib.SMTP(*cfg.relay.listen_address, timeout=30) as client:
                    client.sendmail(
                        SENDER,
                        ["bob@expired.test", "carol@plain.test"],
                        b"Subject: hi\r\n\r\nbody\r\n",
                    )

            await asyncio.to_thread(send)
            await wait_until(lambda: len(dsns.messages) == 2, 60)
    warning, bounce = (m.data for m in dsns.messages)
    assert statuses(warning) == [
        ("bob@expired.test", "delayed", "4.7.5"),
        ("carol@plain.test", "delayed", "4.7.4"),
    ]
    assert statuses(bounce) == [
        ("bob@expired.test", "failed", "5.7.5"),
        ("carol@plain.test", "failed", "5.7.4"),
    ]
