"""The lab attacker proxy: each mode does what it says on the wire, in front of a real lab MX."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiosmtplib
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from lab.attacker import Attacker, AttackMode, garble_starttls, read_reply, strip_starttls
from lab.mx import LabMx
from lab.pki import LabCA

MX_NAME = "mx.example.org"
MESSAGE = b"Subject: x\r\n\r\nhello\r\n"


@pytest.fixture
async def mx(lab_ca: LabCA) -> AsyncIterator[LabMx]:
    """The real MX: STARTTLS with a lab CA certificate for `MX_NAME`."""
    server = LabMx.with_cert(lab_ca, MX_NAME, host="127.0.0.31")
    async with server.running():
        yield server


def _attacker(mx: LabMx, mode: AttackMode | str, ca: LabCA) -> Attacker:
    return Attacker((mx.host, mx.port), mode, mx_name=MX_NAME, ca=ca)


async def _client(attacker: Attacker) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.2",
        port=attacker.port,
        start_tls=False,
        local_hostname="client.test",
        timeout=5,
    )
    await client.connect()
    return client


async def _raw_ehlo(host: str, port: int) -> tuple[list[bytes], asyncio.StreamWriter]:
    """Connect, read the banner, send EHLO: the raw reply lines (and the open connection)."""
    reader, writer = await asyncio.open_connection(host, port)
    await read_reply(reader)
    writer.write(b"EHLO client.test\r\n")
    reply = await read_reply(reader)
    return reply, writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


def _well_formed(reply: list[bytes]) -> bool:
    return all(line.startswith(b"250-") for line in reply[:-1]) and reply[-1].startswith(b"250 ")


def test_strip_fixes_the_continuation_marks() -> None:
    reply = [b"250-mx\r\n", b"250-SIZE 1000\r\n", b"250 STARTTLS\r\n"]
    assert strip_starttls(reply) == [b"250-mx\r\n", b"250 SIZE 1000\r\n"]
    assert strip_starttls([b"250 mx\r\n"]) == [b"250 mx\r\n"]
    assert garble_starttls(reply)[-1] == b"250 XXXXXXXA\r\n"


def test_unknown_mode_is_a_value_error(lab_ca: LabCA) -> None:
    with pytest.raises(ValueError, match="nonsense"):
        Attacker(("127.0.0.1", 25), "nonsense")


async def test_none_passes_tls_end_to_end(mx: LabMx, lab_ca: LabCA) -> None:
    attacker = _attacker(mx, "none", lab_ca)
    async with attacker.running():
        client = await _client(attacker)
        await client.ehlo()
        assert client.supports_extension("starttls")
        await client.starttls(tls_context=lab_ca.client_context(), server_hostname=MX_NAME)
        await client.ehlo()
        await client.sendmail("a@client.test", ["b@example.org"], MESSAGE)
        await client.quit()
    [msg] = mx.messages
    assert msg.tls
    assert b"hello" in msg.data
    assert (attacker.sessions, attacker.events) == (1, ["relayed STARTTLS"])


@pytest.mark.parametrize("mode", [AttackMode.STRIP, AttackMode.GARBLE])
async def test_strip_and_garble_rewrite_the_ehlo_reply(
    mx: LabMx, lab_ca: LabCA, mode: AttackMode
) -> None:
    original, writer = await _raw_ehlo(mx.host, mx.port)
    await _close(writer)
    assert b"250-STARTTLS\r\n" in original or b"250 STARTTLS\r\n" in original
    attacker = _attacker(mx, mode, lab_ca)
    async with attacker.running():
        reply, writer = await _raw_ehlo("127.0.0.2", attacker.port)
        await _close(writer)
        assert _well_formed(reply)
        assert not any(b"STARTTLS" in line for line in reply)
        if mode is AttackMode.STRIP:
            assert len(reply) == len(original) - 1
            assert [x[4:] for x in reply] == [x[4:] for x in original if b"STARTTLS" not in x]
            assert attacker.events == ["stripped STARTTLS"]
        else:
            assert [len(x) for x in reply] == [len(x) for x in original]
            assert any(x[4:] == b"XXXXXXXA\r\n" for x in reply)
            assert attacker.events == ["garbled STARTTLS"]

        # A client sees no STARTTLS and sends in plaintext.
        client = await _client(attacker)
        await client.ehlo()
        assert not client.supports_extension("starttls")
        assert client.supports_extension("size")
        await client.sendmail("a@client.test", ["b@example.org"], MESSAGE)
        await client.quit()
    [msg] = mx.messages
    assert not msg.tls


@pytest.mark.parametrize(
    ("mode", "code", "text"),
    [
        (AttackMode.STARTTLS_454, 454, "4.7.0 TLS not available due to temporary reason"),
        (AttackMode.STARTTLS_501, 501, "5.5.4 Syntax error"),
        (AttackMode.STARTTLS_BAD_CODE, 250, "2.0.0 Ok"),
    ],
)
async def test_starttls_answered_by_the_attacker(
    mx: LabMx, lab_ca: LabCA, mode: AttackMode, code: int, text: str
) -> None:
    attacker = _attacker(mx, mode, lab_ca)
    async with attacker.running():
        client = await _client(attacker)
        await client.ehlo()
        assert client.supports_extension("starttls")
        response = await client.execute_command(b"STARTTLS")
        assert (response.code, response.message) == (code, text)
        # The session goes on in plaintext: the MX never saw the STARTTLS.
        await client.sendmail("a@client.test", ["b@example.org"], MESSAGE)
        await client.quit()
    [msg] = mx.messages
    assert not msg.tls
    assert attacker.events == [f"answered STARTTLS {code}"]


async def test_inject_sends_plaintext_with_the_220(mx: LabMx, lab_ca: LabCA) -> None:
    attacker = _attacker(mx, AttackMode.INJECT, lab_ca)
    async with attacker.running():
        reader, writer = await asyncio.open_connection("127.0.0.2", attacker.port)
        await read_reply(reader)
        writer.write(b"EHLO client.test\r\n")
        await read_reply(reader)
        writer.write(b"STARTTLS\r\n")
        data = await asyncio.wait_for(reader.read(4096), 5)  # one segment: both arrive together
        await _close(writer)
    assert data.startswith(b"220 ")
    assert data.endswith(b"\r\n250-injected\r\n")
    assert data.count(b"\r\n") == 2
    assert attacker.events == ["injected plaintext after 220"]


async def test_ehlo_502_forces_helo(mx: LabMx, lab_ca: LabCA) -> None:
    attacker = _attacker(mx, AttackMode.EHLO_502, lab_ca)
    async with attacker.running():
        client = await _client(attacker)
        response = await client.execute_command(b"EHLO client.test")
        assert (response.code, response.message) == (502, "5.5.2 Error: command not recognized")
        with pytest.raises(aiosmtplib.SMTPHeloError) as info:
            await client.ehlo()
        assert info.value.code == 502
        response = await client.helo()
        assert response.code == 250
        await client.sendmail("a@client.test", ["b@example.org"], MESSAGE)
        await client.quit()
    [msg] = mx.messages
    assert (msg.tls, msg.helo) == (False, "client.test")
    assert attacker.events[:2] == ["answered EHLO 502", "answered EHLO 502"]
    assert "forwarded HELO" in attacker.events


def _peer_cert(client: aiosmtplib.SMTP) -> x509.Certificate:
    assert client.transport is not None
    ssl_object = client.transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def _no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.mark.parametrize(
    ("mode", "verify_code", "issuer", "name"),
    [
        (AttackMode.INTERCEPT, 20, "stsguard lab-rogue CA", MX_NAME),
        (AttackMode.INTERCEPT_WRONG_NAME, 62, "stsguard lab CA", "attacker.invalid"),
    ],
)
async def test_intercept_terminates_tls_and_relays(
    mx: LabMx, lab_ca: LabCA, mode: AttackMode, verify_code: int, issuer: str, name: str
) -> None:
    attacker = _attacker(mx, mode, lab_ca)
    async with attacker.running():
        # A verifying client refuses the attacker's certificate.
        client = await _client(attacker)
        await client.ehlo()
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await client.starttls(tls_context=lab_ca.client_context(), server_hostname=MX_NAME)
        assert info.value.verify_code == verify_code
        client.close()

        # One that does not verify talks to the real MX through the attacker's two TLS sessions.
        client = await _client(attacker)
        await client.ehlo()
        await client.starttls(tls_context=_no_verify(), server_hostname=MX_NAME)
        cert = _peer_cert(client)
        organization = cert.issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        assert organization[0].value == issuer
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name]
        await client.ehlo()
        await client.sendmail("a@client.test", ["b@example.org"], MESSAGE)
        await client.quit()
    [msg] = mx.messages
    assert (msg.tls, msg.helo) == (True, "client.test")
    assert attacker.sessions == 2
    assert attacker.events[0].startswith("client refused intercepted TLS")
    assert attacker.events[1:] == ["intercepted TLS", "TLS to the MX"]


async def test_mode_changes_between_sessions(mx: LabMx, lab_ca: LabCA) -> None:
    attacker = _attacker(mx, AttackMode.NONE, lab_ca)
    async with attacker.running():
        reply, writer = await _raw_ehlo("127.0.0.2", attacker.port)
        await _close(writer)
        assert any(b"STARTTLS" in line for line in reply)
        attacker.mode = AttackMode.STRIP
        reply, writer = await _raw_ehlo("127.0.0.2", attacker.port)
        await _close(writer)
        assert not any(b"STARTTLS" in line for line in reply)
    assert attacker.sessions == 2
    assert attacker.events == ["stripped STARTTLS"]
