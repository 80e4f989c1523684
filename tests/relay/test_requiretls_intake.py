"""REQUIRETLS at the intake (RFC 8689 section 4.1, docs/requiretls.md): offered and accepted only
over TLS, no value, once; the flag reaches the spool and outranks ``TLS-Required: No``; the
``[relay].requiretls_loopback`` exemption for a local MTA or filter on plaintext loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.pki import LabCA
from relay.intake.requiretls import requiretls_refusal, split_requiretls
from relay.message_flags import dsn_flags
from relay.preflight import config_problems
from relay.queue.envelope import decode_envelope, encode_envelope
from relay.queue.spool import MessageFlags, Spool
from tests.cli import run_cli
from tests.relay.intake_client import Raw, make_config

MESSAGE = b"Subject: secret\r\n\r\nbody\r\n"


async def _tls_intake(start_intake: Callable[..., Any], lab_ca: LabCA, **relay: Any) -> Any:
    cert = lab_ca.issue("relay.test", "127.0.0.1")
    return await start_intake(
        tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file), **relay
    )


def _session(
    address: tuple[str, int],
    lab_ca: LabCA | None,
    mail: bytes,
    data: bytes = MESSAGE,
) -> tuple[bytes, bytes, bytes]:
    """EHLO (after STARTTLS when `lab_ca`), MAIL, and the end-of-data reply when MAIL got 250."""
    raw = Raw(address)
    raw.cmd(b"EHLO client.test")
    if lab_ca is not None:
        raw.starttls(lab_ca.client_context(), "relay.test")
    ehlo = raw.cmd(b"EHLO client.test")
    mail_reply = raw.cmd(mail)
    end = b""
    if mail_reply.startswith(b"250"):
        assert raw.cmd(b"RCPT TO:<b@y.test>").startswith(b"250")
        assert raw.cmd(b"DATA").startswith(b"354")
        raw.sock.sendall(data + b".\r\n")
        end = raw.reply()
    raw.close()
    return ehlo, mail_reply, end


async def test_rt01_offered_and_accepted_only_over_tls(
    start_intake: Callable[..., Any], spool: Spool, lab_ca: LabCA
) -> None:
    intake = await _tls_intake(start_intake, lab_ca)
    mail = b"MAIL FROM:<a@x.test> REQUIRETLS"
    ehlo, plain_mail, _ = await asyncio.to_thread(_session, intake.address, None, mail)
    assert b"REQUIRETLS" not in ehlo
    assert plain_mail.startswith(b"530 5.7.10"), plain_mail
    ehlo, tls_mail, end = await asyncio.to_thread(_session, intake.address, lab_ca, mail)
    assert b"250-REQUIRETLS" in ehlo
    assert tls_mail.startswith(b"250"), tls_mail
    assert end.startswith(b"250")
    [msg] = spool.list()
    assert msg.flags == MessageFlags(requiretls=True)
    assert Spool(spool.directory).get(msg.id).flags.requiretls  # as another process reads it


@pytest.mark.parametrize(
    ("mail", "code"),
    [
        (b"MAIL FROM:<a@x.test> REQUIRETLS=YES", b"501 5.5.4"),
        (b"MAIL FROM:<a@x.test> REQUIRETLS requiretls", b"501 5.5.4"),
        (b"MAIL FROM:<a@x.test> REQUIRETLS= ", b"501 5.5.4"),
        (b"MAIL FROM:<a@x.test> SIZE=10 REQUIRETLS BODY=8BITMIME", b"250"),
    ],
)
async def test_rt01_parameter_takes_no_value_and_comes_once(
    start_intake: Callable[..., Any], spool: Spool, lab_ca: LabCA, mail: bytes, code: bytes
) -> None:
    intake = await _tls_intake(start_intake, lab_ca)
    _, reply, _ = await asyncio.to_thread(_session, intake.address, lab_ca, mail)
    assert reply.startswith(code), reply
    assert [m.flags.requiretls for m in spool.list()] == ([True] if code == b"250" else [])


async def test_rt04_requiretls_outranks_tls_required_no(
    start_intake: Callable[..., Any], spool: Spool, lab_ca: LabCA
) -> None:
    intake = await _tls_intake(start_intake, lab_ca)
    data = b"TLS-Required: No\r\n" + MESSAGE
    mail = b"MAIL FROM:<a@x.test> REQUIRETLS"
    await asyncio.to_thread(_session, intake.address, lab_ca, mail, data)
    [msg] = spool.list()
    assert msg.flags == MessageFlags(requiretls=True, tls_required_no=False)
    assert spool.read_data(msg.id).endswith(data)  # passed on unchanged (RFC 8689 4.1 MAY)


async def test_flag_is_per_transaction(
    start_intake: Callable[..., Any], spool: Spool, lab_ca: LabCA
) -> None:
    """A refused nested MAIL with REQUIRETLS does not mark the open transaction."""
    intake = await _tls_intake(start_intake, lab_ca)

    def client() -> bytes:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO client.test")
        raw.starttls(lab_ca.client_context(), "relay.test")
        raw.cmd(b"EHLO client.test")
        assert raw.cmd(b"MAIL FROM:<a@x.test>").startswith(b"250")
        nested = raw.cmd(b"MAIL FROM:<a@x.test> REQUIRETLS")
        raw.cmd(b"RCPT TO:<b@y.test>")
        raw.cmd(b"DATA")
        raw.sock.sendall(MESSAGE + b".\r\n")
        raw.reply()
        raw.close()
        return nested

    assert (await asyncio.to_thread(client)).startswith(b"503")
    [msg] = spool.list()
    assert not msg.flags.requiretls


async def test_loopback_exemption_is_off_by_default_and_takes_the_postfix_header(
    start_intake: Callable[..., Any], spool: Spool
) -> None:
    off = await start_intake()
    on = await start_intake(requiretls_loopback=True)
    header = b"Require-TLS-ESMTP: yes\r\n" + MESSAGE
    plain = b"MAIL FROM:<a@x.test>"
    ehlo, _, _ = await asyncio.to_thread(_session, off.address, None, plain, header)
    assert b"REQUIRETLS" not in ehlo
    ehlo, reply, _ = await asyncio.to_thread(
        _session, on.address, None, b"MAIL FROM:<a@x.test> REQUIRETLS"
    )
    assert b"250-REQUIRETLS" in ehlo
    assert reply.startswith(b"250")
    await asyncio.to_thread(_session, on.address, None, plain, header)
    flags = sorted(m.flags.requiretls for m in spool.list())
    assert flags == [False, True, True]  # off ignores the header; on takes parameter and header


async def test_loopback_exemption_needs_accept_networks(
    start_intake: Callable[..., Any], spool: Spool
) -> None:
    intake = await start_intake(requiretls_loopback=True, accept_networks=["127.0.0.2/32"])
    ehlo, reply, _ = await asyncio.to_thread(
        _session, intake.address, None, b"MAIL FROM:<a@x.test> REQUIRETLS"
    )
    assert b"REQUIRETLS" not in ehlo
    assert reply.startswith(b"530 5.7.10")


def test_split_requiretls_only_reads_parameters() -> None:
    assert split_requiretls('<"x REQUIRETLS"@y> SIZE=1') == ('<"x REQUIRETLS"@y> SIZE=1', [])
    assert split_requiretls("<a@b> requiretls SIZE=1") == ("<a@b> SIZE=1", ["requiretls"])
    assert split_requiretls("<a@b>") == ("<a@b>", [])
    assert requiretls_refusal(["REQUIRETLS"], allowed=True) is None


def test_no_path_means_no_parameters() -> None:
    assert split_requiretls("a@b REQUIRETLS") == ("a@b REQUIRETLS", [])


def test_spool_flag_is_must_understand_and_written_only_when_set(spool: Spool) -> None:
    """An older reader holds (schema 2: must_understand) or refuses (schema 1: unknown flag) a
    REQUIRETLS message; it never delivers it without REQUIRETLS. Other messages stay readable."""
    flags = MessageFlags(requiretls=True)
    marked = spool.get(spool.put("a@x.test", ["b@y.test"], b"x\r\n", flags=flags))
    plain = spool.get(spool.put("a@x.test", ["b@y.test"], b"x\r\n"))
    raw = json.loads(encode_envelope(marked))
    assert raw["must_understand"] == ["flags.requiretls"]
    assert raw["flags"]["requiretls"] is True
    assert "requiretls" not in json.loads(encode_envelope(plain))["flags"]
    assert decode_envelope(encode_envelope(marked)).flags.requiretls
    assert dsn_flags(marked.flags) == MessageFlags(is_bounce=True, requiretls=True)


def test_queue_show_says_requiretls(tmp_path: Path) -> None:
    config = tmp_path / "stsguard.toml"
    config.write_text(f'[relay]\nstate_dir = "{tmp_path / "state"}"\n')
    spool = Spool(tmp_path / "state" / "queue")
    queue_id = spool.put("a@x.test", ["b@y.test"], MESSAGE, flags=MessageFlags(requiretls=True))
    shown = run_cli("queue", "show", queue_id, "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert "requiretls" in shown.stdout
    listed = run_cli("queue", "list", "--json", "--config", str(config))
    assert json.loads(listed.stdout)[0]["flags"] == ["requiretls"]


def test_check_warns_when_the_loopback_exemption_cannot_apply(tmp_path: Path) -> None:
    useless = make_config(tmp_path, requiretls_loopback=True, accept_networks=["192.0.2.0/24"])
    assert any("requiretls_loopback" in p.message for p in config_problems(useless))
    useful = make_config(tmp_path, requiretls_loopback=True)
    assert not any("requiretls_loopback" in p.message for p in config_problems(useful))
