"""Intake limits and checks in-process, against real clients on loopback: the caps that keep slots
for hosts that may relay, the session time limit and junk-command budget, ``TLS-Required: No``
per ``[relay].tls_required_no``, the dummy password hash, and the pure checks behind them."""

from __future__ import annotations

import asyncio
import errno
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.pki import LabCA
from lab.world import wait_until
from relay.errors import SpoolError
from relay.intake.auth import DEFAULT_ITERATIONS, PasswordAuthenticator, hash_password, parse_hash
from relay.intake.hygiene import (
    NEEDS_SMTPUTF8,
    address_problem,
    command_problem,
    domain_ok,
)
from relay.intake.limits import (
    AuthFailures,
    ConnectionLimits,
    RefusalLog,
    client_key,
    connection_budget,
)
from relay.intake.server import Intake, received_header
from relay.queue.spool import Spool
from tests.relay import intake_client
from tests.relay.intake_client import make_config

MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


class Raw(intake_client.Raw):
    def mail(self, data: bytes = MESSAGE, options: bytes = b"") -> bytes:
        assert self.cmd(b"MAIL FROM:<a@x.test>" + options).startswith(b"250")
        assert self.cmd(b"RCPT TO:<b@y.test>").startswith(b"250")
        assert self.cmd(b"DATA").startswith(b"354")
        self.sock.sendall(data + b".\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


# --- connection caps -------------------------------------------------------------------------


async def test_outsiders_get_half_the_slots_and_hosts_that_may_relay_the_rest(
    start_intake: Callable[..., Any],
) -> None:
    intake = await start_intake(
        accept_networks=("127.0.0.1/32",), max_connections=4, max_connections_per_ip=100
    )

    def clients() -> list[bytes]:
        opened = [Raw(intake.address, "127.0.0.2") for _ in range(3)]  # 2 fit: half of 4
        opened += [Raw(intake.address, "127.0.0.1") for _ in range(3)]  # 2 more fit: 4 in all
        banners = [c.banner for c in opened]
        opened[0].close()  # an outsider leaves: its slot is free again
        opened[0] = Raw(intake.address, "127.0.0.1")
        banners.append(opened[0].banner)
        for c in opened:
            c.close()
        return banners

    with structlog.testing.capture_logs() as logs:
        banners = await asyncio.to_thread(clients)
    codes = [b[:9] for b in banners]
    assert codes[:3] == [b"220 relay", b"220 relay", b"421 4.7.0"]
    assert codes[3:6] == [b"220 relay", b"220 relay", b"421 4.7.0"]
    assert codes[6] == b"220 relay"
    refused = [e["limit"] for e in logs if e["event"] == "intake.connection_refused"]
    assert refused == ["max_connections_outside", "max_connections"]


def test_connection_limits_count_and_release() -> None:
    limits = ConnectionLimits.for_relay(5, 2, has_networks=True)
    assert limits.max_outside == 2
    assert limits.admit("a", inside=True) is None
    assert limits.admit("a", inside=True) is None
    assert limits.admit("a", inside=True) == "max_connections_per_ip"
    assert limits.admit("b", inside=False) is None
    assert limits.admit("c", inside=False) is None
    assert limits.admit("d", inside=False) == "max_connections_outside"
    assert limits.admit("e", inside=True) is None
    assert limits.admit("f", inside=True) == "max_connections"
    for key, inside in [("a", True), ("a", True), ("b", False), ("c", False), ("e", True)]:
        limits.release(key, inside=inside)
    assert (limits.total, limits.outside, limits.per_ip) == (0, 0, {})
    # Without networks to keep slots for, everyone may use them all.
    assert ConnectionLimits.for_relay(4, 2, has_networks=False).max_outside == 4


def test_refused_connections_are_logged_without_flooding_the_log() -> None:
    log = RefusalLog(10)
    assert log.due("a", 0) == 0
    assert [log.due("a", t) for t in (1, 2, 3)] == [None, None, None]
    assert log.due("b", 3) == 0  # another address is logged at once
    assert log.due("a", 11) == 3  # the next line says how many were not
    assert log.due("a", 12) is None


def test_client_key_counts_ipv6_per_64() -> None:
    assert client_key("127.0.0.2") == "127.0.0.2"
    assert client_key("::ffff:127.0.0.2") == "127.0.0.2"
    assert (
        client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    )
    assert client_key("2001:db8:1:3::5") != client_key("2001:db8:1:2::5")
    assert client_key("not an address") == "not an address"


def test_connection_budget_fits_the_descriptor_limit() -> None:
    assert connection_budget(300, 1024, 128) == 300
    assert connection_budget(2000, 1024, 128) == 896
    assert connection_budget(300, 100, 128) == 8  # never none at all
    assert connection_budget(4, 100, 128) == 4  # and never more than asked for


def test_descriptor_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    """In a child process started with a soft 512 under a hard 2048."""
    code = "from relay.intake.limits import raise_descriptor_limit as r; print(*r())"
    result = subprocess.run(
        ["prlimit", "--nofile=512:2048", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.split() == ["2048", "2048"]


def test_accept_out_of_descriptors_is_one_log_line(tmp_path: Path, spool: Spool) -> None:
    """asyncio reports an EMFILE at accept to the loop's exception handler and retries a second
    later; the intake's handler turns that into one warning, and passes anything else on."""
    intake = Intake(make_config(tmp_path), spool)
    loop = asyncio.new_event_loop()
    seen: list[dict[str, Any]] = []
    intake._previous_handler = lambda _loop, context: seen.append(context)
    try:
        with structlog.testing.capture_logs() as logs:
            intake._loop_exception(
                loop,
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                },
            )
            other = {"message": "something else", "exception": RuntimeError("x")}
            intake._loop_exception(loop, other)
    finally:
        loop.close()
    assert [(e["event"], e["log_level"], e["error"]) for e in logs] == [
        ("intake.accept_backoff", "warning", "EMFILE")
    ]
    assert seen == [other]


# --- session limits ----------------------------------------------------------------------------


async def test_junk_commands_end_the_session_but_mail_resets_the_budget(
    start_intake: Callable[..., Any], spool: Spool
) -> None:
    intake = await start_intake(max_junk_commands=3)

    def client() -> list[bytes]:
        raw = Raw(intake.address)
        replies = [raw.cmd(b"EHLO c.test"), raw.cmd(b"NOOP"), raw.cmd(b"RSET")]  # 3 of 3
        replies.append(raw.mail())  # a queued message starts the budget again
        replies += [raw.cmd(b"NOOP"), raw.cmd(b"NOOP"), raw.cmd(b"NOOP"), raw.cmd(b"NOOP")]
        raw.close()
        return replies

    replies = await asyncio.to_thread(client)
    assert [r[:3] for r in replies[:7]] == [b"250"] * 7
    assert replies[7].startswith(b"421 4.7.0 relay.test Too many commands without mail")
    assert len(spool.list()) == 1


async def test_session_time_limit_never_cuts_a_message_being_queued(
    start_intake: Callable[..., Any], tmp_path: Path
) -> None:
    """The session limit runs out while the spool is writing: the client still gets its 250
    (the message is queued once), then the 421; a session that sends NOOPs gets the 421 too."""
    release = threading.Event()
    entered = threading.Event()

    class SlowSpool(Spool):
        def commit(self, *args: Any, **kwargs: Any) -> list[SpoolError | None]:
            entered.set()
            assert release.wait(30)
            return super().commit(*args, **kwargs)

    slow = SlowSpool(tmp_path / "slow")
    intake = await start_intake(slow, session_timeout=1)

    def client() -> tuple[bytes, bytes]:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO c.test")
        raw.cmd(b"MAIL FROM:<a@x.test>")
        raw.cmd(b"RCPT TO:<b@y.test>")
        raw.cmd(b"DATA")
        raw.sock.sendall(MESSAGE + b".\r\n")
        assert entered.wait(30)
        return raw.reply(), raw.reply()  # blocks until released below

    task = asyncio.ensure_future(asyncio.to_thread(client))
    await asyncio.to_thread(entered.wait, 30)
    await asyncio.sleep(1.5)  # the session limit passes while the commit is held
    release.set()
    queued, after = await task
    assert queued.startswith(b"250 2.0.0")
    assert after.startswith(b"421 4.7.0 relay.test Session time limit reached")
    assert len(slow.list()) == 1

    def noops() -> bytes:
        raw = Raw(intake.address)
        for _ in range(200):
            reply = raw.cmd(b"NOOP")
            if not reply.startswith(b"250"):
                return reply
            threading.Event().wait(0.2)
        return b"never closed"

    assert (await asyncio.to_thread(noops)).startswith(
        b"421 4.7.0 relay.test Session time limit reached"
    )


async def test_data_that_keeps_arriving_is_not_idle(start_intake: Callable[..., Any]) -> None:
    """The idle timeout counts bytes too, not only commands: a message sent slowly in pieces,
    each within the idle timeout, is queued although DATA took longer than the timeout."""
    intake = await start_intake(idle_timeout=2)

    def client() -> bytes:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO c.test")
        raw.cmd(b"MAIL FROM:<a@x.test>")
        raw.cmd(b"RCPT TO:<b@y.test>")
        raw.cmd(b"DATA")
        for _ in range(5):
            raw.sock.sendall(b"X-Pad: slowly\r\n")
            threading.Event().wait(0.8)
        raw.sock.sendall(b"\r\nbody\r\n.\r\n")
        return raw.reply()

    assert (await asyncio.to_thread(client)).startswith(b"250 2.0.0")


async def test_second_starttls_is_503(start_intake: Callable[..., Any], lab_ca: LabCA) -> None:
    cert = lab_ca.issue("relay.test", "127.0.0.1")
    intake = await start_intake(tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file))

    def client() -> tuple[bytes, bytes, bytes]:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO c.test")
        assert raw.cmd(b"STARTTLS").startswith(b"220")
        raw.sock = lab_ca.client_context().wrap_socket(raw.sock, server_hostname="relay.test")
        ehlo = raw.cmd(b"EHLO c.test")
        again = raw.cmd(b"STARTTLS")
        still = raw.cmd(b"NOOP")  # the session goes on inside TLS
        return ehlo, again, still

    ehlo, again, still = await asyncio.to_thread(client)
    assert b"STARTTLS" not in ehlo
    assert again.startswith(b"503 5.5.1")
    assert still.startswith(b"250")


# --- TLS-Required: No --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "login", "honoured"),
    [
        ("honour", False, True),
        ("honour", True, True),
        ("authenticated", False, False),
        ("authenticated", True, True),
        ("ignore", False, False),
        ("ignore", True, False),
    ],
)
async def test_tls_required_no_is_honoured_as_configured(
    start_intake: Callable[..., Any],
    spool: Spool,
    lab_ca: LabCA,
    tmp_path: Path,
    mode: str,
    login: bool,
    honoured: bool,
) -> None:
    cert = lab_ca.issue("relay.test", "127.0.0.1")
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('pw', iterations=1000)}\n")
    intake = await start_intake(
        tls_cert_file=str(cert.cert_file),
        tls_key_file=str(cert.key_file),
        auth_file=str(users),
        tls_required_no=mode,
    )

    def client() -> bytes:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO c.test")
        raw.cmd(b"STARTTLS")
        raw.sock = lab_ca.client_context().wrap_socket(raw.sock, server_hostname="relay.test")
        raw.cmd(b"EHLO c.test")
        if login:
            assert raw.cmd(b"AUTH PLAIN AGFsaWNlAHB3").startswith(b"235")  # \0alice\0pw
        return raw.mail(b"TLS-Required: No\r\nSubject: x\r\n\r\nbody\r\n")

    assert (await asyncio.to_thread(client)).startswith(b"250")
    [msg] = spool.list()
    assert msg.flags.tls_required_no is honoured


# --- AUTH ---------------------------------------------------------------------------------------


def test_unknown_users_cost_as_much_as_known_ones() -> None:
    """No timing oracle for user names: the dummy hash has the iterations of the real ones."""
    users = {
        "bob": parse_hash(hash_password("pw", iterations=1000)),
        "eve": parse_hash(hash_password("pw", iterations=210_000)),
    }
    assert PasswordAuthenticator(users).dummy.iterations == 210_000
    assert PasswordAuthenticator({}).dummy.iterations == DEFAULT_ITERATIONS
    one = {"bob": parse_hash(hash_password("pw", iterations=1000))}
    assert PasswordAuthenticator(one).dummy.iterations == 1000
    assert not PasswordAuthenticator(one).check(b"nobody", b"pw")


def test_auth_failures_per_address_within_the_window() -> None:
    failures = AuthFailures(3, window=900)
    assert failures.record("a", 0) == 1
    assert failures.record("a", 10) == 2
    assert not failures.blocked("a", 20)
    assert failures.record("a", 30) == 3
    assert failures.blocked("a", 40)
    assert not failures.blocked("b", 40)
    assert not failures.blocked("a", 905)  # the first has aged out
    assert failures.count("a", 10_000) == 0


# --- hygiene (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "smtputf8", "reply"),
    [
        ("bob@good.test", False, None),
        ('"x y"@good.test', False, None),
        ("bob@[127.0.0.1]", False, None),
        ("bob@[IPv6:2001:db8::1]", False, None),
        ("bob@good.test.", False, None),
        ("bøb@good.test", False, NEEDS_SMTPUTF8),
        ("bøb@good.test", True, None),
        ("bob@gøød.test", True, None),
        ('"x\rBcc: spy@evil.test\r"@good.test', False, "553 5.1.3"),
        ("bob\u2028@good.test", True, "553 5.1.3"),
        ("bob\x85@good.test", True, "553 5.1.3"),
        ("bob\x00@good.test", False, "553 5.1.3"),
        ("b\udcffob@good.test", True, "553 5.1.3"),
        ("bob", False, "553 5.1.3"),
        ("@good.test", False, "553 5.1.3"),
        ("$@[:&_", False, "553 5.1.3"),
        ("bob@-bad.test", False, "553 5.1.3"),
        ("bob@bad-.test", False, "553 5.1.3"),
        ("bob@bad..test", False, "553 5.1.3"),
        ("bob@[300.0.0.1]", False, "553 5.1.3"),
        ("bob@" + "a" * 64 + ".test", False, "553 5.1.3"),
        ("a" * 250 + "@good.test", False, "553 5.1.3"),
        ("<>", False, "553 5.1.3"),
    ],
)
def test_address_problem(address: str, smtputf8: bool, reply: str | None) -> None:
    problem = address_problem(address, smtputf8=smtputf8, null_ok=False)
    if reply is None:
        assert problem is None
    else:
        assert problem is not None
        assert problem.startswith(reply)


def test_null_sender_only_where_allowed() -> None:
    assert address_problem("<>", smtputf8=False, null_ok=True) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_nothing_with_a_control_character_passes(text: str) -> None:
    """Whatever passes the command and address checks has no C0 control, DEL or lone surrogate,
    so it cannot break a header line or an SMTP command at the next hop."""
    bad = any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xDC80 <= ord(c) <= 0xDCFF for c in text)
    assert (command_problem(text) is not None) == bad
    for smtputf8 in (False, True):
        if address_problem(text, smtputf8=smtputf8, null_ok=True) is None and text != "<>":
            assert not bad
            assert text.isprintable()
            assert "@" in text
            assert domain_ok(text.rpartition("@")[2])
            line = received_header(
                helo="c",
                client="127.0.0.1",
                hostname="h",
                protocol="ESMTP",
                queue_id="Q",
                rcpts=[text],
                now=0,
            )
            assert line.count(b"\r") == line.count(b"\n") == line.count(b"\r\n") == 4
            assert b"\x00" not in line


def test_command_problem_names_invalid_utf8() -> None:
    assert command_problem(None) is None
    assert command_problem("FROM:<a@b.test> SIZE=10") is None
    assert (
        command_problem("FROM:<a\udcff@b.test>")
        == "501 5.5.2 Syntax error: the command is not valid UTF-8"
    )
    assert (
        command_problem(
            "FROM:<a\t@b.test>",
        )
        is not None
    )


async def test_password_check_does_not_stall_other_sessions(
    start_intake: Callable[..., Any], lab_ca: LabCA, tmp_path: Path
) -> None:
    """PBKDF2 runs in a worker thread: while a costly check is under way, another session is
    answered (an order of events, not a time)."""
    cert = lab_ca.issue("relay.test", "127.0.0.1")
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('pw', iterations=3_000_000)}\n")
    intake = await start_intake(
        tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file), auth_file=str(users)
    )

    def clients() -> tuple[bytes, bool, bytes]:
        slow = Raw(intake.address)
        slow.cmd(b"EHLO c.test")
        slow.cmd(b"STARTTLS")
        slow.sock = lab_ca.client_context().wrap_socket(slow.sock, server_hostname="relay.test")
        slow.cmd(b"EHLO c.test")
        slow.sock.sendall(b"AUTH PLAIN AGFsaWNlAHB3\r\n")  # \0alice\0pw
        other = Raw(intake.address)
        noop = other.cmd(b"NOOP")
        slow.sock.setblocking(False)
        try:
            first = slow.sock.recv(1)
        except (BlockingIOError, ssl.SSLWantReadError):
            first = b""
        slow.buf += first
        answered_first = first != b""
        slow.sock.setblocking(True)
        slow.sock.settimeout(120)
        return noop, answered_first, slow.reply()

    noop, auth_answered_first, auth = await asyncio.to_thread(clients)
    assert noop.startswith(b"250")
    assert not auth_answered_first
    assert auth.startswith(b"235")


async def test_recipients_beyond_the_limit_get_452(
    start_intake: Callable[..., Any], spool: Spool
) -> None:
    intake = await start_intake(max_recipients=100)

    def client() -> tuple[list[bytes], bytes]:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO c.test")
        raw.cmd(b"MAIL FROM:<a@x.test>")
        replies = [raw.cmd(f"RCPT TO:<r{n}@y.test>".encode()) for n in range(102)]
        raw.cmd(b"DATA")
        raw.sock.sendall(MESSAGE + b".\r\n")
        return replies, raw.reply()

    replies, queued = await asyncio.to_thread(client)
    assert all(r.startswith(b"250") for r in replies[:100])
    assert all(r.startswith(b"452 4.5.3") for r in replies[100:])
    assert queued.startswith(b"250")
    [msg] = spool.list()
    assert len(msg.recipients) == 100


async def test_stalled_tls_handshake_is_closed_at_the_idle_timeout(
    start_intake: Callable[..., Any], lab_ca: LabCA
) -> None:
    cert = lab_ca.issue("relay.test", "127.0.0.1")
    intake = await start_intake(
        tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file), idle_timeout=1
    )

    def client() -> tuple[bytes, bytes]:
        raw = Raw(intake.address)
        raw.cmd(b"EHLO c.test")
        go = raw.cmd(b"STARTTLS")
        rest = b""
        while chunk := raw.sock.recv(4096):  # no ClientHello: wait for the relay to close
            rest += chunk
        return go, rest

    with structlog.testing.capture_logs() as logs:
        go, rest = await asyncio.to_thread(client)
    assert go.startswith(b"220")
    assert b"421" not in rest  # nothing in plaintext after the 220
    events = [e["event"] for e in logs]
    assert "intake.session_closed" in events
    assert "intake.error" not in events


async def test_reconfigure_changes_limits_for_new_sessions(
    start_intake: Callable[..., Any], tmp_path: Path
) -> None:
    """What a SIGHUP reload hands the intake: new limits apply to new sessions, and the sessions
    already open stay counted."""
    intake = await start_intake(max_connections_per_ip=1)

    def two() -> list[bytes]:
        first, second = Raw(intake.address), Raw(intake.address)
        banners = [first.banner, second.banner]
        first.close()
        second.close()
        return banners

    held = await asyncio.to_thread(Raw, intake.address)
    try:
        assert (await asyncio.to_thread(Raw, intake.address)).banner.startswith(b"421")
        intake.reconfigure(make_config(tmp_path, max_connections_per_ip=2))
        third = await asyncio.to_thread(Raw, intake.address)
        assert third.banner.startswith(b"220")  # 2 allowed now, the held one still counts
        assert (await asyncio.to_thread(Raw, intake.address)).banner.startswith(b"421")
        third.close()
    finally:
        held.close()
    await wait_until(lambda: intake.rules.connections.total == 0, 30)
    assert [b[:3] for b in await asyncio.to_thread(two)] == [b"220", b"220"]


async def test_intake_processes_take_new_limits_on_reload(tmp_path: Path) -> None:
    """`IntakePool.reload` (SIGHUP to each intake process): the child re-reads the file."""
    from lab.world import free_port
    from relay.intake.pool import IntakePool

    config_file = tmp_path / "relay.toml"
    port = free_port()

    def write(per_ip: int) -> None:
        config_file.write_text(
            f'[relay]\nlisten = "127.0.0.1:{port}"\nhostname = "relay.test"\n'
            f'state_dir = "{tmp_path / "state"}"\nlog_format = "json"\n'
            f"max_connections_per_ip = {per_ip}\n"
        )

    def admitted() -> bool:
        extra = Raw(("127.0.0.1", port))
        extra.close()
        return extra.banner.startswith(b"220")

    write(1)
    pool = IntakePool(1, config_file, ("127.0.0.1", port), on_queued=lambda ids: None)
    await pool.start()
    try:
        held = await asyncio.to_thread(Raw, ("127.0.0.1", port))
        assert held.banner.startswith(b"220")
        assert not await asyncio.to_thread(admitted)
        child = pool.children[1].proc
        write(2)
        pool.reload()
        await wait_until(admitted, 30)
        assert pool.children[1].proc is child  # the same process, not a restarted one
        assert child.returncode is None
        held.close()
    finally:
        await pool.stop()
