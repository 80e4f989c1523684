"""The SMTP intake against real clients on loopback: relaying rules, size, smuggling, TLS, AUTH."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import structlog.testing
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.pki import LabCA
from relay.errors import ConfigError, SpoolError
from relay.intake.auth import (
    PasswordAuthenticator,
    hash_password,
    load_auth_file,
    parse_auth_file,
    parse_hash,
)
from relay.intake.server import (
    Intake,
    _IntakeSMTP,
    bare_line_end,
    client_allowed,
    parse_networks,
    received_header,
    tls_required_no,
)
from relay.queue.spool import MessageFlags, QueuedMessage, Spool
from tests.relay.intake_client import Raw, make_config

MESSAGE = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def send(
    address: tuple[str, int],
    mail_from: str,
    rcpts: list[str],
    data: bytes,
    *,
    source: tuple[str, int] | None = None,
    tls: ssl.SSLContext | None = None,
    login: tuple[str, str] | None = None,
    mail_options: tuple[str, ...] = (),
) -> dict[str, tuple[int, bytes]]:
    """smtplib in a thread: the refused recipients, or raises on a refused message."""
    with smtplib.SMTP(*address, source_address=source, timeout=5) as client:
        if tls is not None:
            client.starttls(context=tls)
        if login is not None:
            client.login(*login)
        refused: dict[str, tuple[int, bytes]] = client.sendmail(
            mail_from, rcpts, data, mail_options=list(mail_options)
        )
        return refused


# --- accepting and relaying ------------------------------------------------------------------


async def test_accepted_message_is_spooled_before_the_250(
    start_intake: Callable[..., Any], spool: Spool, tmp_path: Path
) -> None:
    """The 250 must not leave before spool.commit returned: hold it and watch the client wait."""
    release = threading.Event()
    entered = threading.Event()

    class SlowSpool(Spool):
        def commit(self, *args: Any, **kwargs: Any) -> list[SpoolError | None]:
            entered.set()
            assert release.wait(5)
            return super().commit(*args, **kwargs)

    intake = await start_intake(SlowSpool(tmp_path / "queue"))

    def client() -> tuple[bytes, bool]:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO client.test")
        raw.cmd(b"MAIL FROM:<a@example.net>")
        raw.cmd(b"RCPT TO:<b@example.org>")
        raw.cmd(b"RCPT TO:<c@example.com>")
        assert raw.cmd(b"DATA").startswith(b"354")
        raw.sock.sendall(MESSAGE + b".\r\n")
        assert entered.wait(5)
        raw.sock.settimeout(0.3)
        early = True
        try:
            raw.sock.recv(1)
        except TimeoutError:
            early = False
        raw.sock.settimeout(5)
        release.set()
        reply = raw.reply()
        raw.close()
        return reply, early

    reply, early = await asyncio.to_thread(client)
    assert not early, "a reply arrived while the spool was still writing"
    assert reply.startswith(b"250 2.0.0 Ok: queued as ")
    queue_id = reply.rsplit(b" ", 1)[1].decode()
    # Another process opening the queue sees the message and its envelope.
    msg = Spool(tmp_path / "queue").get(queue_id)
    assert msg.mail_from == "a@example.net"
    assert [r.address for r in msg.recipients] == ["b@example.org", "c@example.com"]
    assert msg.client == "127.0.0.1"
    data = spool.read_data(queue_id)
    assert data.endswith(MESSAGE)
    assert data.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test")
    assert f"with ESMTP id {queue_id};".encode() in data


async def test_outside_accept_networks_cannot_relay(
    start_intake: Callable[..., Any], spool: Spool
) -> None:
    intake = await start_intake(accept_networks=("127.0.0.2/32",))

    def client() -> tuple[bytes, bytes]:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO client.test")
        raw.cmd(b"MAIL FROM:<a@example.net>")
        rcpt = raw.cmd(b"RCPT TO:<b@example.org>")
        data = raw.cmd(b"DATA")
        raw.close()
        return rcpt, data

    rcpt, data = await asyncio.to_thread(client)
    assert rcpt.startswith(b"550 5.7.1")
    assert data.startswith(b"503")
    assert spool.list() == []


async def test_accepted_network_by_source_address(
    start_intake: Callable[..., Any], spool: Spool
) -> None:
    intake = await start_intake(accept_networks=("127.0.0.3/32",))
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await asyncio.to_thread(send, intake.address, "a@x.test", ["b@y.test"], MESSAGE)
    await asyncio.to_thread(
        send, intake.address, "a@x.test", ["b@y.test"], MESSAGE, source=("127.0.0.3", 0)
    )
    assert [m.client for m in spool.list()] == ["127.0.0.3"]


async def test_null_sender_is_accepted(start_intake: Callable[..., Any], spool: Spool) -> None:
    intake = await start_intake()
    await asyncio.to_thread(send, intake.address, "<>", ["b@example.org"], MESSAGE)
    [msg] = spool.list()
    assert msg.mail_from == ""


async def test_ehlo_keywords(start_intake: Callable[..., Any]) -> None:
    intake = await start_intake(max_message_size=4096)

    def ehlo() -> bytes:
        raw = Raw(intake.address)
        reply = raw.cmd(b"EHLO client.test")
        raw.close()
        return reply

    reply = (await asyncio.to_thread(ehlo)).decode()
    lines = [line[4:] for line in reply.split("\n")]
    assert lines[0] == "relay.test"
    assert {"SIZE 4096", "8BITMIME", "SMTPUTF8", "PIPELINING"} <= set(lines)
    assert not any(k.startswith(("STARTTLS", "AUTH")) for k in lines)


async def test_pipelined_commands_are_answered_in_order(
    start_intake: Callable[..., Any], spool: Spool
) -> None:
    intake = await start_intake()

    def client() -> list[bytes]:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO client.test")
        raw.sock.sendall(
            b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"
        )
        replies = [raw.reply() for _ in range(4)]
        raw.sock.sendall(MESSAGE + b".\r\n")
        replies.append(raw.reply())
        raw.close()
        return replies

    replies = await asyncio.to_thread(client)
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354", b"250"]
    assert len(spool.list()) == 1


async def test_smtputf8_and_tls_required_no_become_flags(
    start_intake: Callable[..., Any], spool: Spool
) -> None:
    intake = await start_intake()
    data = b"TLS-Required: No\r\nSubject: x\r\n\r\nbody\r\n"
    await asyncio.to_thread(
        send,
        intake.address,
        "a@x.test",
        ["b@y.test"],
        data,
        mail_options=("SMTPUTF8", "BODY=8BITMIME"),
    )
    [msg] = spool.list()
    assert msg.flags == MessageFlags(tls_required_no=True, smtputf8=True, eight_bit=True)


async def test_oversize_message_gets_552(start_intake: Callable[..., Any], spool: Spool) -> None:
    intake = await start_intake(max_message_size=2048)
    big = MESSAGE + b"x" * 70 + b"\r\n"
    big = big * 40
    with pytest.raises(smtplib.SMTPResponseException) as info:
        await asyncio.to_thread(send, intake.address, "a@x.test", ["b@y.test"], big)
    assert info.value.smtp_code == 552
    assert spool.list() == []

    # Announced with SIZE: refused at MAIL already.
    def announced() -> bytes:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO client.test")
        reply = raw.cmd(b"MAIL FROM:<a@x.test> SIZE=999999")
        raw.close()
        return reply

    assert (await asyncio.to_thread(announced)).startswith(b"552")


# --- smuggling (TLS-06) ----------------------------------------------------------------------

SMUGGLED = (
    b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nSubject: fake\r\n\r\nx\r\n"
)


@pytest.mark.parametrize("end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r"])
async def test_tls06_smuggling_never_splits_a_message(
    start_intake: Callable[..., Any], spool: Spool, end: bytes
) -> None:
    intake = await start_intake()

    def client() -> tuple[bytes, bytes]:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO client.test")
        raw.cmd(b"MAIL FROM:<a@x.test>")
        raw.cmd(b"RCPT TO:<b@y.test>")
        raw.cmd(b"DATA")
        raw.sock.sendall(b"Subject: real\r\n\r\nreal body" + end + SMUGGLED + b".\r\n")
        final = raw.reply()
        after = raw.cmd(b"NOOP")
        raw.close()
        return final, after

    final, after = await asyncio.to_thread(client)
    assert final.startswith(b"550 5.5.2"), final
    assert after.startswith(b"250")
    assert spool.list() == []  # never two messages; here none


async def test_tls06_clean_message_with_dot_lines_is_one_message(
    start_intake: Callable[..., Any], spool: Spool
) -> None:
    intake = await start_intake()
    body = b"Subject: dots\r\n\r\n.leading dot\r\n..\r\nend\r\n"
    await asyncio.to_thread(send, intake.address, "a@x.test", ["b@y.test"], body)
    [msg] = spool.list()
    assert spool.read_data(msg.id).endswith(body)


# --- failures inside the handler --------------------------------------------------------------


async def test_junk_paths_get_a_clear_error_not_a_451(
    start_intake: Callable[..., Any], spool: Spool
) -> None:
    """The stdlib address parser raises IndexError on ``<``: the client hears 553, not 451."""
    intake = await start_intake(spool)

    def client() -> list[bytes]:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO client.test")
        replies = [raw.cmd(b"MAIL FROM:<"), raw.cmd(b"MAIL FROM:<a@x.test>")]
        replies.append(raw.cmd(b"RCPT TO:<"))
        raw.close()
        return replies

    with structlog.testing.capture_logs() as logs:
        mail_junk, mail_ok, rcpt_junk = await asyncio.to_thread(client)
    assert mail_junk.startswith(b"553 5.1.3")
    assert mail_ok.startswith(b"250")
    assert rcpt_junk.startswith(b"553 5.1.3")
    assert not [e for e in logs if e["event"] == "intake.error"]


async def test_spool_failure_answers_451(start_intake: Callable[..., Any], tmp_path: Path) -> None:
    class BrokenSpool(Spool):
        def commit(self, batch: Any) -> list[SpoolError | None]:
            return [SpoolError("disk full")] * len(batch)

    intake = await start_intake(BrokenSpool(tmp_path / "broken"))
    with pytest.raises(smtplib.SMTPDataError) as info:
        await asyncio.to_thread(send, intake.address, "a@x.test", ["b@y.test"], MESSAGE)
    assert info.value.smtp_code == 451
    error = cast(bytes, info.value.smtp_error)  # typeshed says str; smtplib gives bytes
    assert error.startswith(b"4.3.0")
    assert b"disk full" not in error


# --- inbound STARTTLS and AUTH ----------------------------------------------------------------


async def test_inbound_starttls(
    start_intake: Callable[..., Any], spool: Spool, lab_ca: LabCA
) -> None:
    cert = lab_ca.issue("relay.test", "127.0.0.1")
    intake = await start_intake(tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file))
    await asyncio.to_thread(
        send, intake.address, "a@x.test", ["b@y.test"], MESSAGE, tls=lab_ca.client_context()
    )
    [msg] = spool.list()
    assert b"with ESMTPS id" in spool.read_data(msg.id)


async def test_tls04_plaintext_pipelined_after_starttls_is_discarded(
    start_intake: Callable[..., Any], spool: Spool, lab_ca: LabCA
) -> None:
    cert = lab_ca.issue("relay.test", "127.0.0.1")
    intake = await start_intake(tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file))

    def client() -> tuple[bytes, bytes]:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO client.test")
        # The injected commands ride in the same segment as STARTTLS.
        raw.sock.sendall(b"STARTTLS\r\nEHLO evil.test\r\nMAIL FROM:<evil@x.test>\r\n")
        go = raw.reply()
        assert raw.buf == b""
        ctx = lab_ca.client_context()
        raw.sock = ctx.wrap_socket(raw.sock, server_hostname="relay.test")
        raw.cmd(b"EHLO client.test")
        rcpt = raw.cmd(b"RCPT TO:<b@y.test>")
        raw.close()
        return go, rcpt

    go, rcpt = await asyncio.to_thread(client)
    assert go.startswith(b"220")
    assert rcpt.startswith(b"503"), rcpt  # the injected MAIL FROM never counted


async def test_auth_only_over_tls_and_lets_outsiders_relay(
    start_intake: Callable[..., Any], spool: Spool, lab_ca: LabCA, tmp_path: Path
) -> None:
    cert = lab_ca.issue("relay.test", "127.0.0.1")
    auth_file = tmp_path / "users"
    auth_file.write_text(f"# users\nalice:{hash_password('s3cret', iterations=1000)}\n")
    intake = await start_intake(
        tls_cert_file=str(cert.cert_file),
        tls_key_file=str(cert.key_file),
        auth_file=str(auth_file),
        accept_networks=("127.0.0.2/32",),
    )

    def features(tls: bool) -> bytes:
        raw = Raw(intake.address)
        reply = raw.cmd(b"EHLO client.test")
        if tls:
            raw.cmd(b"STARTTLS")
            raw.sock = lab_ca.client_context().wrap_socket(raw.sock, server_hostname="relay.test")
            reply = raw.cmd(b"EHLO client.test")
        raw.close()
        return reply

    assert b"AUTH" not in await asyncio.to_thread(features, False)
    assert b"AUTH LOGIN PLAIN" in await asyncio.to_thread(features, True)

    ctx = lab_ca.client_context()
    with pytest.raises(smtplib.SMTPAuthenticationError):
        await asyncio.to_thread(
            send,
            intake.address,
            "a@x.test",
            ["b@y.test"],
            MESSAGE,
            tls=ctx,
            login=("alice", "wrong"),
        )
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await asyncio.to_thread(send, intake.address, "a@x.test", ["b@y.test"], MESSAGE, tls=ctx)
    await asyncio.to_thread(
        send,
        intake.address,
        "a@x.test",
        ["b@y.test"],
        MESSAGE,
        tls=ctx,
        login=("alice", "s3cret"),
    )
    [msg] = spool.list()
    assert b"with ESMTPSA id" in spool.read_data(msg.id)


def test_auth_without_tls_is_a_config_error(tmp_path: Path, spool: Spool) -> None:
    auth_file = tmp_path / "users"
    auth_file.write_text(f"alice:{hash_password('x', iterations=1000)}\n")
    with pytest.raises(ConfigError, match="only over TLS"):
        Intake(make_config(tmp_path, auth_file=str(auth_file)), spool)


# --- pure checks ------------------------------------------------------------------------------


def test_client_allowed() -> None:
    nets = parse_networks(["127.0.0.0/8", "2001:db8::/32"])
    assert client_allowed("127.0.0.5", nets)
    assert client_allowed("::ffff:127.0.0.1", nets)
    assert client_allowed("2001:db8::1", nets)
    assert not client_allowed("10.0.0.1", nets)
    assert not client_allowed("::1", nets)
    assert not client_allowed("not-an-ip", nets)


def test_received_header_shape() -> None:
    line = received_header(
        helo="mx (evil)\r\nX-Injected: 1",
        client="127.0.0.1",
        hostname="relay.test",
        protocol="ESMTPS",
        queue_id="ABCDEFGHIJKLMNOP",
        rcpts=["b@y.test"],
        now=0,
    )
    assert line == (
        b"Received: from mxevilX-Injected:1 ([127.0.0.1])\r\n"
        b"\tby relay.test (stsguard) with ESMTPS id ABCDEFGHIJKLMNOP\r\n"
        b"\tfor <b@y.test>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
    )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_tls06_bare_line_end_property(data: bytes) -> None:
    offset = bare_line_end(data)
    normalised = data.replace(b"\r\n", b"")
    if offset is None:
        assert b"\r" not in normalised
        assert b"\n" not in normalised
    else:
        assert data[offset : offset + 1] in (b"\r", b"\n")
        assert data[offset : offset + 2] != b"\r\n"
        assert offset == 0 or data[offset - 1 : offset + 1] != b"\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"x", b"\r\n.\r\n"]), max_size=30))
def test_tls06_bare_line_end_on_line_end_soup(parts: list[bytes]) -> None:
    """The fast path (counting pairs) and the search agree on data made of line ends."""
    data = b"".join(parts)
    clean = data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")
    offset = bare_line_end(data)
    assert (offset is None) == clean
    if offset is not None:
        assert data[offset : offset + 2] != b"\r\n"
        assert offset == 0 or data[offset - 1 : offset + 1] != b"\r\n"


_ATOM = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=5)
_PATH_TEXT = st.one_of(
    st.builds(
        lambda local, domain, gap, rest: f"<{'.'.join(local)}@{'.'.join(domain)}>{gap}{rest}",
        st.lists(_ATOM, min_size=1, max_size=3),
        st.lists(st.text(alphabet="ab-9", min_size=1, max_size=4), min_size=1, max_size=3),
        st.sampled_from(["", " ", "  ", "\t", " (c) "]),
        st.sampled_from(["", "SIZE=100", "BODY=8BITMIME SMTPUTF8", "x", "(comment)"]),
    ),
    st.text(alphabet='<>@."() \tab\\[]:', max_size=20),
)


@settings(max_examples=400, deadline=None)
@given(_PATH_TEXT)
def test_fast_path_parser_agrees_with_aiosmtpd(arg: str) -> None:
    """MAIL FROM / RCPT TO paths: the fast path gives what aiosmtpd's own parser gives."""
    loop = asyncio.new_event_loop()
    try:
        ours = _IntakeSMTP(object(), loop=loop, hostname="h")
        try:
            expected = SMTP._getaddr(ours, arg)
        except Exception:  # aiosmtpd's own parser trips over "<" and "<$@[:&_>(x)"
            expected = (None, None)
        assert ours._getaddr(arg) == expected
    finally:
        loop.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_tls_required_header_parser_never_raises(data: bytes) -> None:
    assert tls_required_no(data) in (True, False)
    assert tls_required_no(b"Subject: x\r\ntls-required:  NO \r\n\r\n" + data)
    assert not tls_required_no(b"Subject: x\r\n\r\nTLS-Required: No\r\n")


async def test_on_queued_and_one_log_line_per_message(tmp_path: Path, spool: Spool) -> None:
    queued: list[tuple[QueuedMessage, bytes]] = []
    intake = Intake(
        make_config(tmp_path),
        spool,
        on_queued=lambda m, d: queued.append((m, d)),
        listen=("127.0.0.1", 0),
    )
    async with intake.running():
        with structlog.testing.capture_logs() as logs:
            await asyncio.to_thread(
                send, intake.address, "a@x.test", ["b@y.test", "c@y.test"], MESSAGE
            )
    [msg] = spool.list()
    assert queued == [(msg, spool.read_data(msg.id))]
    [line] = [e for e in logs if e["event"] == "intake.queued"]
    assert line["queue_id"] == msg.id
    assert line["mail_from"] == "a@x.test"
    assert line["rcpt_count"] == 2
    assert line["size"] == len(MESSAGE)
    assert line["client"] == "127.0.0.1"


async def test_failing_on_queued_still_answers_250(tmp_path: Path, spool: Spool) -> None:
    def broken(message: QueuedMessage, data: bytes) -> None:
        raise RuntimeError("runner gone")

    intake = Intake(make_config(tmp_path), spool, on_queued=broken, listen=("127.0.0.1", 0))
    async with intake.running():
        await asyncio.to_thread(send, intake.address, "a@x.test", ["b@y.test"], MESSAGE)
    assert len(spool.list()) == 1


def test_auth_file_parsing(tmp_path: Path) -> None:
    good = hash_password("pw", iterations=1000, salt=b"salt")
    users = parse_auth_file(f"# comment\n\nbob:{good}\n")
    assert PasswordAuthenticator(users).check(b"bob", b"pw")
    assert not PasswordAuthenticator(users).check(b"bob", b"pW")
    assert not PasswordAuthenticator(users).check(b"eve", b"pw")
    for bad in [
        "bob",
        ":x",
        "bob:md5$1$2$3",
        "bob:pbkdf2-sha256$x$c2FsdA==$AAAA",
        "bob:pbkdf2-sha256$1000$c2FsdA==$AAAA",
    ]:
        with pytest.raises(ConfigError, match="line 1"):
            parse_auth_file(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_auth_file(tmp_path / "absent")


@settings(max_examples=200, deadline=None)
@given(login=st.binary(max_size=40), password=st.binary(max_size=40), line=st.text(max_size=80))
def test_auth_inputs_never_crash(login: bytes, password: bytes, line: str) -> None:
    users = {"bob": parse_hash(hash_password("pw", iterations=10, salt=b"s"))}
    assert PasswordAuthenticator(users).check(login, password) == (
        login == b"bob" and password == b"pw"
    )
    with contextlib.suppress(ConfigError):
        parse_auth_file(line)


async def test_serve_runs_in_a_task_group_until_cancelled(tmp_path: Path, spool: Spool) -> None:
    intake = Intake(make_config(tmp_path), spool, listen=("127.0.0.1", 0))
    await intake.start()  # then serve() keeps this server (and its port) going
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(intake.serve())
        await asyncio.to_thread(send, intake.address, "a@x.test", ["b@y.test"], MESSAGE)
        task.cancel()
    assert len(spool.list()) == 1
    with pytest.raises(RuntimeError):
        _ = intake.address
