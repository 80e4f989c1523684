"""Every attacker mode on the wire, judged by `detect` the way the relay reads a session.

The session below is a small sans-relay version of the delivery sequence: banner, EHLO (judged),
STARTTLS (reply judged), the buffer after the 220 (judged), the verified handshake (failure
judged). Each attack must come out as the finding and result type the lab promises.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiosmtplib
import pytest

from detect.ehlo import judge_banner, judge_ehlo
from detect.model import Finding
from detect.starttls import judge_pre_handshake_bytes, judge_starttls_reply
from detect.tls import judge_tls_failure
from lab.attacker import Attacker, AttackMode
from lab.mx import LabMx
from lab.pki import LabCA
from lab.world import wait_until

MX_NAME = "mx.wire.test"

# What each attack is caught as (the same table the lab's scenarios promise).
CAUGHT_AS: dict[AttackMode, tuple[str, str]] = {
    AttackMode.STRIP: ("starttls-stripped", "starttls-not-supported"),
    AttackMode.GARBLE: ("starttls-garbled", "starttls-not-supported"),
    AttackMode.STARTTLS_454: ("starttls-rejected", "starttls-not-supported"),
    AttackMode.STARTTLS_501: ("starttls-rejected", "starttls-not-supported"),
    AttackMode.STARTTLS_BAD_CODE: ("starttls-bad-reply", "starttls-not-supported"),
    AttackMode.INJECT: ("plaintext-injection", "validation-failure"),
    AttackMode.EHLO_502: ("ehlo-refused", "starttls-not-supported"),
    AttackMode.INTERCEPT: ("tls-failure", "certificate-not-trusted"),
    AttackMode.INTERCEPT_WRONG_NAME: ("tls-failure", "certificate-host-mismatch"),
}


@pytest.fixture
async def mx(lab_ca: LabCA) -> AsyncIterator[LabMx]:
    server = LabMx.with_cert(lab_ca, MX_NAME, host="127.0.0.44")
    async with server.running():
        yield server


async def judged_session(port: int, ca: LabCA) -> list[Finding]:
    """Findings of one session through the attacker, expecting STARTTLS (as under a policy)."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.45", port=port, start_tls=False, local_hostname="relay.test", timeout=5
    )
    banner = await client.connect()
    findings = list(judge_banner(banner.code, banner.message))
    try:
        ehlo = await client.execute_command(b"EHLO", b"relay.test")
        judged = judge_ehlo(ehlo.code, ehlo.message.split("\n"), expect_starttls=True)
        findings += judged.findings
        if not judged.offers_starttls:
            return findings
        reply = await client.execute_command(b"STARTTLS")
        bad_reply = judge_starttls_reply(reply.code, reply.message)
        if bad_reply is not None:
            return [*findings, bad_reply]
        assert client.protocol is not None
        injected = judge_pre_handshake_bytes(bytes(client.protocol._buffer))
        if injected is not None:
            return [*findings, injected]
        # Our own STARTTLS got its 220: the handshake on the same connection (as the relay does).
        assert client.protocol.transport is not None
        try:
            tls = await asyncio.get_running_loop().start_tls(
                client.protocol.transport,  # type: ignore[arg-type]
                client.protocol,
                ca.client_context(),
                server_hostname=MX_NAME,
            )
        except ssl.SSLCertVerificationError as exc:
            return [*findings, judge_tls_failure(exc.verify_code, exc.verify_message)]
        assert tls is not None
        tls.close()
        return findings
    finally:
        client.close()


@pytest.mark.parametrize("mode", list(AttackMode))
async def test_each_attack_is_caught_as_the_lab_promises(
    mx: LabMx, lab_ca: LabCA, mode: AttackMode
) -> None:
    attacker = Attacker((mx.host, mx.port), mode, host="127.0.0.45", mx_name=MX_NAME, ca=lab_ca)
    async with attacker.running():
        findings = await judged_session(attacker.port, lab_ca)
        await wait_until(lambda: bool(attacker.events), 5)  # the proxy saw the session out
    caught = [(str(f.kind), f.result_type) for f in findings]
    if mode is AttackMode.NONE:
        assert caught == []
    else:
        assert caught == [CAUGHT_AS[mode]]
    assert attacker.sessions == 1
    assert len(attacker.events) == 1, attacker.events
