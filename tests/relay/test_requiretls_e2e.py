"""REQUIRETLS end to end (docs/requiretls.md): `stsguard relay` as its own process, a sender that
submits over STARTTLS with ``MAIL FROM:<...> REQUIRETLS``, and lab MX hosts on loopback that do
and do not offer REQUIRETLS. The DSN a sender gets follows RFC 8689 section 5 (RT-05)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import ssl
import time
from pathlib import Path

import pytest

from lab.mx import CertKind, LabMx
from lab.world import LabWorld, wait_until
from tests.relay_process import start_relay, stop_relay, write_config

SENDER = "alice@sender.test"
BODY_SECRET = "the body nobody outside TLS may read"


def _message(rcpt: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: confidential\r\nTLS-Required: No\r\n"
        f"\r\n{BODY_SECRET}\r\n"
    ).encode()


def _submit(port: int, context: ssl.SSLContext, rcpt: str) -> tuple[int, bytes]:
    """STARTTLS, then MAIL FROM with REQUIRETLS (retried while the relay starts)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            client = smtplib.SMTP("127.0.0.1", port, timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with client:
        client.ehlo("upstream.test")
        client.starttls(context=context)
        client.ehlo("upstream.test")
        assert client.has_extn("requiretls")
        code, text = client.mail(SENDER, ["REQUIRETLS"])
        assert code == 250, text
        assert client.rcpt(rcpt)[0] == 250
        return client.data(_message(rcpt))


async def _enforce_domain(world: LabWorld, domain: str, ip: str, *, offers: bool) -> LabMx:
    mx = LabMx.with_cert(world.ca, f"mx.{domain}", host=ip, cert=CertKind.GOOD)
    mx.requiretls = offers
    await world.serve_mx(mx)
    world.publish_mx(domain, [(10, f"mx.{domain}")])
    world.publish_policy(domain, "enforce", [f"mx.{domain}"])
    return mx


@pytest.mark.slow
async def test_rt02_rt03_rt05_relay_process_delivers_or_bounces_with_a_headers_only_dsn(
    tmp_path: Path,
) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        offering = await _enforce_domain(world, "example.org", "127.0.0.51", offers=True)
        lacking = await _enforce_domain(world, "lacking.test", "127.0.0.52", offers=False)
        sender_mx = await _enforce_domain(world, "sender.test", "127.0.0.53", offers=True)
        cert = world.ca.issue("relay.lab.test", "127.0.0.1")
        config_file, port = write_config(
            world,
            tmp_path,
            relay={"tls_cert_file": str(cert.cert_file), "tls_key_file": str(cert.key_file)},
            tlsrpt={"enabled": False},
        )
        relay = start_relay(config_file)
        try:
            context = world.ca.client_context()
            code, _ = await asyncio.to_thread(_submit, port, context, "bob@example.org")
            assert code == 250
            code, _ = await asyncio.to_thread(_submit, port, context, "carol@lacking.test")
            assert code == 250
            await wait_until(lambda: len(offering.messages) == 1 and len(sender_mx.messages) == 1)
        finally:
            stop_relay(relay, 10)

    [delivered] = offering.messages
    assert delivered.requiretls  # RT-02: MAIL FROM:<...> REQUIRETLS at the MX
    assert delivered.tls
    assert b"TLS-Required: No" in delivered.data  # passed on, without effect (RT-04)
    assert lacking.messages == []  # RT-03: bounced, never sent

    [dsn] = sender_mx.messages
    assert dsn.mail_from == "<>"
    assert dsn.requiretls  # RT-05: the DSN itself goes with REQUIRETLS
    report = email.message_from_bytes(dsn.data, policy=email.policy.default)
    parts = [p.get_content_type() for p in report.walk()]
    assert "text/rfc822-headers" in parts  # RT-05: headers only (RET=HDRS)
    assert "message/rfc822" not in parts
    assert BODY_SECRET.encode() not in dsn.data
    assert b"Status: 5.7.30" in dsn.data
