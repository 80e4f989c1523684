"""The lab recipient MX: plaintext and STARTTLS with each kind of certificate."""

from __future__ import annotations

import ssl

import aiosmtplib
import pytest

from lab.mx import CertKind, LabMx
from lab.pki import LabCA


async def _send(mx: LabMx, *, tls: bool, context: ssl.SSLContext | None = None) -> None:
    client = aiosmtplib.SMTP(
        hostname=mx.host, port=mx.port, start_tls=False, local_hostname="client.test"
    )
    await client.connect()
    try:
        await client.ehlo()
        if tls:
            await client.starttls(tls_context=context, server_hostname=mx.hostname)
            await client.ehlo()
        await client.sendmail("a@client.test", ["b@example.org"], b"Subject: x\r\n\r\nhello\r\n")
    finally:
        if client.is_connected:
            await client.quit()


async def test_plaintext_mx_records_messages() -> None:
    mx = LabMx("127.0.0.21", hostname="mx.example.org")
    async with mx.running():
        await _send(mx, tls=False)
    assert mx.connections == 1
    [msg] = mx.messages
    assert (msg.mail_from, msg.rcpt_tos, msg.tls, msg.helo) == (
        "a@client.test",
        ("b@example.org",),
        False,
        "client.test",
    )
    assert b"hello" in msg.data


async def test_good_certificate_over_starttls(lab_ca: LabCA) -> None:
    mx = LabMx.with_cert(lab_ca, "mx.example.org", host="127.0.0.22")
    async with mx.running():
        await _send(mx, tls=True, context=lab_ca.client_context())
    [msg] = mx.messages
    assert msg.tls
    assert msg.tls_version in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize(
    ("cert", "verify_code"),
    [(CertKind.EXPIRED, 10), (CertKind.WRONG_NAME, 62), (CertKind.UNTRUSTED, 20)],
)
async def test_broken_certificates_fail_verification(
    lab_ca: LabCA, cert: CertKind, verify_code: int
) -> None:
    mx = LabMx.with_cert(lab_ca, "mx.example.org", host="127.0.0.23", cert=cert)
    async with mx.running():
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await _send(mx, tls=True, context=lab_ca.client_context())
    assert info.value.verify_code == verify_code
    assert mx.messages == []


async def test_no_certificate_means_no_starttls(lab_ca: LabCA) -> None:
    mx = LabMx.with_cert(lab_ca, "mx.example.org", host="127.0.0.24", cert=CertKind.NONE)
    async with mx.running():
        client = aiosmtplib.SMTP(hostname=mx.host, port=mx.port, start_tls=False)
        await client.connect()
        await client.ehlo()
        assert not client.supports_extension("starttls")
        await client.quit()


async def test_rcpt_reply_rejects_recipients() -> None:
    mx = LabMx("127.0.0.25", rcpt_reply="550 5.1.1 no such user")
    async with mx.running():
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await _send(mx, tls=False)
    assert mx.messages == []
