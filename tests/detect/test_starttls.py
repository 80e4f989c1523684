"""The STARTTLS reply (TLS-02), bytes before the handshake (TLS-04), EHLO after TLS (TLS-03)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiosmtplib
import pytest

from detect.ehlo import judge_ehlo
from detect.model import STARTTLS_NOT_SUPPORTED, VALIDATION_FAILURE, FindingKind
from detect.starttls import judge_pre_handshake_bytes, judge_starttls_reply
from lab.attacker import INJECTED, Attacker, AttackMode
from lab.mx import LabMx
from lab.pki import LabCA

MX_NAME = "mx.detect.test"


@pytest.mark.parametrize(
    ("code", "text", "kind"),
    [
        (220, "2.0.0 Ready to start TLS", None),
        (220, "", None),
        (454, "4.7.0 TLS not available due to temporary reason", FindingKind.STARTTLS_REJECTED),
        (501, "5.5.4 Syntax error", FindingKind.STARTTLS_REJECTED),
        (250, "2.0.0 Ok", FindingKind.STARTTLS_BAD_REPLY),
        (300, "go ahead", FindingKind.STARTTLS_BAD_REPLY),
        (500, "5.5.1 command unrecognized", FindingKind.STARTTLS_BAD_REPLY),
        (502, "5.5.2 command not recognized", FindingKind.STARTTLS_BAD_REPLY),
        (221, "2.0.0 Bye", FindingKind.STARTTLS_BAD_REPLY),
        (554, "5.7.0 no", FindingKind.STARTTLS_BAD_REPLY),
        (0, "garbage", FindingKind.STARTTLS_BAD_REPLY),
        (-1, "\x00garbage\xff", FindingKind.STARTTLS_BAD_REPLY),
    ],
)
def test_tls02_starttls_replies(code: int, text: str, kind: FindingKind | None) -> None:
    finding = judge_starttls_reply(code, text)
    if kind is None:
        assert finding is None
        return
    assert finding is not None
    assert finding.kind is kind
    assert finding.evidence == f"{code} {text}".strip()
    assert finding.result_type == STARTTLS_NOT_SUPPORTED
    assert finding.expected.startswith("220")


@pytest.mark.parametrize(
    "data",
    [
        b"250-injected\r\n",
        b"\r\n",
        b"\x16",  # even one byte that looks like a TLS record: not ours, not from this server
        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n",
        bytes(range(256)),
    ],
)
def test_tls04_injected_bytes_table(data: bytes) -> None:
    finding = judge_pre_handshake_bytes(data)
    assert finding is not None
    assert finding.kind is FindingKind.PLAINTEXT_INJECTION
    assert finding.result_type == VALIDATION_FAILURE
    assert finding.evidence.startswith(repr(data[:64]))
    assert ("bytes)" in finding.evidence) is (len(data) > 64)
    assert finding.expected == "nothing between the 220 and the TLS handshake"


def test_tls04_bytes_after_the_220_are_injection() -> None:
    assert judge_pre_handshake_bytes(b"") is None
    finding = judge_pre_handshake_bytes(b"250-injected\r\n")
    assert finding is not None
    assert finding.kind is FindingKind.PLAINTEXT_INJECTION
    assert finding.evidence == repr(b"250-injected\r\n")
    assert finding.result_type == VALIDATION_FAILURE
    assert finding.reason_code == "plaintext-injection"
    long = judge_pre_handshake_bytes(b"A" * 1000)
    assert long is not None
    assert long.evidence == repr(b"A" * 64) + " (+936 bytes)"


@pytest.fixture
async def mx(lab_ca: LabCA) -> AsyncIterator[LabMx]:
    server = LabMx.with_cert(lab_ca, MX_NAME, host="127.0.0.41")
    async with server.running():
        yield server


async def _client(host: str, port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname=host, port=port, start_tls=False, local_hostname="relay.test", timeout=5
    )
    await client.connect()
    return client


async def test_tls04_injection_seen_on_the_wire(mx: LabMx, lab_ca: LabCA) -> None:
    """The attacker appends plaintext to the MX's 220: it sits in the client's buffer."""
    attacker = Attacker((mx.host, mx.port), AttackMode.INJECT, host="127.0.0.42", ca=lab_ca)
    async with attacker.running():
        client = await _client("127.0.0.42", attacker.port)
        await client.ehlo()
        reply = await client.execute_command(b"STARTTLS")
        assert judge_starttls_reply(reply.code, reply.message) is None
        assert client.protocol is not None
        finding = judge_pre_handshake_bytes(bytes(client.protocol._buffer))
        client.close()
    assert finding is not None
    assert finding.kind is FindingKind.PLAINTEXT_INJECTION
    assert finding.evidence == repr(INJECTED)


async def test_tls04_clean_220_leaves_an_empty_buffer(mx: LabMx) -> None:
    client = await _client(mx.host, mx.port)
    await client.ehlo()
    reply = await client.execute_command(b"STARTTLS")
    assert reply.code == 220
    assert client.protocol is not None
    assert judge_pre_handshake_bytes(bytes(client.protocol._buffer)) is None
    client.close()


async def test_tls03_ehlo_after_the_handshake_is_judged_afresh(mx: LabMx, lab_ca: LabCA) -> None:
    """After TLS the server no longer offers STARTTLS; judged with nothing expected, that is no
    finding, and nothing learned before the handshake carries over."""
    client = await _client(mx.host, mx.port)
    before = await client.execute_command(b"EHLO", b"relay.test")
    first = judge_ehlo(before.code, before.message.split("\n"), expect_starttls=True)
    assert first.offers_starttls
    assert first.findings == ()
    await client.starttls(tls_context=lab_ca.client_context(), server_hostname=MX_NAME)
    after = await client.execute_command(b"EHLO", b"relay.test")
    second = judge_ehlo(after.code, after.message.split("\n"), expect_starttls=False)
    assert not second.offers_starttls
    assert second.findings == ()
    assert second.keywords != first.keywords
    await client.quit()
