"""Hostile clients against `stsguard relay` as its own process on loopback (issue 12): descriptor
exhaustion under a 1,024-descriptor limit, connection caps, idle timeout, injection through
commands and addresses, parser crashes, a second STARTTLS and AUTH guessing."""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import shutil
import signal
import smtplib
import socket
from pathlib import Path
from typing import Any

import pytest

from lab.mx import CertKind
from lab.world import LabWorld, wait_until
from relay.intake.auth import hash_password
from tests.relay import intake_client
from tests.relay_process import enforced_example_org, relay_process, write_config

pytestmark = pytest.mark.slow

MESSAGE = b"Subject: hi\r\nMessage-ID: <abuse@upstream.test>\r\n\r\nbody\r\n"


def log_lines(config_file: Path) -> list[dict[str, Any]]:
    raw = (config_file.parent / "relay.log").read_text(errors="replace").splitlines()
    return [json.loads(line) for line in raw if line.startswith("{")]


def log_text(config_file: Path) -> str:
    return (config_file.parent / "relay.log").read_text(errors="replace")


def spooled(config_file: Path) -> list[str]:
    msg = config_file.parent / "state" / "queue" / "msg"
    return sorted(p.name for p in msg.iterdir()) if msg.exists() else []


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(5)
            return sock.recv(3) == b"220"
    except OSError:
        return False


def Raw(port: int, source: str = "127.0.0.1") -> intake_client.Raw:
    return intake_client.Raw(("127.0.0.1", port), source)


def send_ok(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("app@upstream.test", ["bob@example.org"], MESSAGE)


# --- descriptors and connection caps ----------------------------------------------------------


def _open_idle(port: int, count: int, source: str) -> list[tuple[socket.socket, bytes]]:
    """`count` connections from `source` that never send anything, with the first reply line
    of each (220 or 421) or b"" when the relay closed it without one."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(30)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    replies = []
    for sock in socks:
        try:
            line = sock.recv(200)
        except OSError:
            line = b""
        replies.append((sock, line))
    return replies


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
@pytest.mark.parametrize(
    "relay_keys",
    [{}, {"max_connections_per_ip": 100000}],
    ids=["defaults", "no-per-ip-cap"],
)
async def test_idle_connections_beyond_1024_descriptors_do_not_stop_the_relay(
    tmp_path: Path, relay_keys: dict[str, Any]
) -> None:
    """1,100 idle connections from an address that may not relay, against a relay limited to
    1,024 descriptors: the relay refuses what is over its caps with 421, stays up, and a host
    that may relay still gets its mail queued (250) and delivered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY or hard >= 1400 else 1400
    try:  # raising the hard limit needs root (CAP_SYS_RESOURCE), as CI has
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1400), want))
    except (ValueError, OSError):
        pytest.skip(f"this test process needs 1,400 descriptors; the hard limit is {hard}")
    try:
        async with LabWorld(tmp_path / "world").running() as world:
            mx = await enforced_example_org(world)
            config_file, port = write_config(
                world,
                tmp_path,
                tlsrpt={"enabled": False},
                relay={"accept_networks": ["127.0.0.1/32"], **relay_keys},
            )
            with relay_process(config_file, ("prlimit", "--nofile=1024:1024")) as relay:
                await wait_until(lambda: listening(port), 30)
                idle = await asyncio.to_thread(_open_idle, port, 1100, "127.0.0.2")
                try:
                    greeted = [s for s, line in idle if line.startswith(b"220")]
                    refused = [s for s, line in idle if line.startswith(b"421 4.7.0")]
                    assert len(greeted) + len(refused) == 1100
                    [listen] = [
                        e for e in log_lines(config_file) if e["event"] == "intake.listening"
                    ]
                    assert listen["descriptor_limit"] == 1024
                    expected_held = min(
                        listen["max_connections_per_ip"], listen["max_connections_outside"]
                    )
                    assert len(greeted) == expected_held < 1024
                    # A host that may relay still gets through, and the mail goes out.
                    await asyncio.to_thread(send_ok, port)
                    await wait_until(lambda: len(mx.messages) == 1, 30)
                    assert relay.poll() is None
                finally:
                    for sock, _ in idle:
                        sock.close()
                await asyncio.to_thread(send_ok, port)
                await wait_until(lambda: len(mx.messages) == 2, 30)
                assert relay.poll() is None
            text = log_text(config_file)
            assert "Too many open files" not in text
            assert "Traceback" not in text
            # About a thousand refusals, a few log lines (one per address per 10 s).
            refusals = [
                e for e in log_lines(config_file) if e["event"] == "intake.connection_refused"
            ]
            assert 1 <= len(refusals) < 100
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("intake_processes", [0, 1])
async def test_per_ip_cap_and_idle_timeout_answer_421(
    tmp_path: Path, intake_processes: int
) -> None:
    """Also in an intake process (the limits are per process)."""
    async with LabWorld(tmp_path / "world").running() as world:
        await enforced_example_org(world)
        config_file, port = write_config(
            world,
            tmp_path,
            tlsrpt={"enabled": False},
            relay={
                "max_connections_per_ip": 3,
                "idle_timeout": "2s",
                "intake_processes": intake_processes,
            },
        )
        with relay_process(config_file):
            await wait_until(lambda: listening(port), 30)

            def clients() -> tuple[list[bytes], bytes, list[bytes]]:
                held = [Raw(port, "127.0.0.3") for _ in range(3)]
                over = Raw(port, "127.0.0.3")
                other = Raw(port, "127.0.0.4")  # another address is not affected
                other.close()
                # Nothing is sent: each held session ends with a 421 after the idle timeout.
                after = [c.reply() for c in held]
                for c in held:
                    c.close()
                return [c.banner for c in held] + [other.banner], over.banner, after

            banners, over, after = await asyncio.to_thread(clients)
        assert all(b.startswith(b"220") for b in banners)
        assert over.startswith(b"421 4.7.0")
        for reply in after:
            assert reply.startswith(b"421 4.7.0"), reply
            assert b"Idle timeout" in reply
        limits = {e.get("limit") for e in log_lines(config_file) if e.get("client") == "127.0.0.3"}
        assert {"max_connections_per_ip", "idle_timeout"} <= limits


# --- injection and parser errors -------------------------------------------------------------


HOSTILE = [
    # (command, expected reply prefix)
    (b'RCPT TO:<"x\rBcc: spy@evil.test\r"@good.test>', b"501 5.5.2"),
    (b"RCPT TO:<bob\x00@good.test>", b"501 5.5.2"),
    (b"RCPT TO:<bob@good.test\x01>", b"501 5.5.2"),
    (b"RCPT TO:<b\xffob@good.test>", b"501 5.5.2"),
    ("RCPT TO:<bøb@good.test>".encode(), b"553 5.6.7"),
    ("RCPT TO:<bob@gøød.test>".encode(), b"553 5.6.7"),
    (b"RCPT TO:<$@[:&_>(x)", b"553"),
    (b"RCPT TO:<bob@[:&_>", b"553"),
    (b"RCPT TO:<bob>", b"553"),
    (b"RCPT TO:<", b"553"),
]


async def test_hostile_commands_get_5xx_and_nothing_is_spooled(tmp_path: Path) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await enforced_example_org(world)
        config_file, port = write_config(world, tmp_path, tlsrpt={"enabled": False})
        with relay_process(config_file) as relay:
            await wait_until(lambda: listening(port), 30)

            def session() -> dict[bytes, bytes]:
                replies: dict[bytes, bytes] = {}
                raw = Raw(port)
                raw.cmd(b"EHLO upstream.test")
                replies[b"MAIL bad"] = raw.cmd(b"MAIL FROM:<$@[:&_>(x)")
                replies[b"MAIL nul"] = raw.cmd(b"MAIL FROM:<a\x00@upstream.test>")
                replies[b"MAIL 8bit"] = raw.cmd("MAIL FROM:<äpp@upstream.test>".encode())
                assert raw.cmd(b"MAIL FROM:<app@upstream.test>").startswith(b"250")
                for command, _ in HOSTILE:
                    replies[command] = raw.cmd(command)
                replies[b"DATA"] = raw.cmd(b"DATA")  # no recipient was accepted
                replies[b"EHLO"] = raw.cmd(b"EHLO up\rstream.test")
                # With SMTPUTF8 the same 8-bit recipient is fine.
                raw.cmd(b"RSET")
                raw.cmd(b"MAIL FROM:<app@upstream.test> SMTPUTF8")
                replies[b"utf8 ok"] = raw.cmd("RCPT TO:<bøb@example.org>".encode())
                raw.cmd(b"QUIT")
                raw.close()
                return replies

            replies = await asyncio.to_thread(session)
            assert replies[b"MAIL bad"].startswith(b"553 5.1.3")
            assert replies[b"MAIL nul"].startswith(b"501 5.5.2")
            assert replies[b"MAIL 8bit"].startswith(b"553 5.6.7")
            for command, expected in HOSTILE:
                assert replies[command].startswith(expected), (command, replies[command])
            assert replies[b"DATA"].startswith(b"503")
            assert replies[b"EHLO"].startswith(b"501 5.5.2")
            assert replies[b"utf8 ok"].startswith(b"250")
            assert spooled(config_file) == []
            assert relay.poll() is None
            # A clean message on a new session still goes through.
            await asyncio.to_thread(send_ok, port)
            await wait_until(lambda: len(mx.messages) == 1, 30)
        [message] = mx.messages
        assert b"Bcc" not in message.data
        assert message.rcpt_tos == ("bob@example.org",)
        text = log_text(config_file)
        assert "Traceback" not in text
        events = log_lines(config_file)
        assert not [e for e in events if e["event"] == "intake.error"]
        unparsable = [e for e in events if e["event"] == "intake.address_unparsable"]
        assert unparsable
        assert all(len(json.dumps(e)) < 300 for e in unparsable)  # one short line each


# --- STARTTLS and AUTH ---------------------------------------------------------------------------


async def test_second_starttls_503_and_auth_guessing_is_throttled(tmp_path: Path) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        await enforced_example_org(world)
        cert = world.ca.issue("relay.lab.test", "127.0.0.1")
        users = tmp_path / "users"
        users.write_text(f"alice:{hash_password('s3cret', iterations=1000)}\n")
        config_file, port = write_config(
            world,
            tmp_path,
            tlsrpt={"enabled": False},
            relay={
                "tls_cert_file": str(cert.cert_file),
                "tls_key_file": str(cert.key_file),
                "auth_file": str(users),
                "auth_failures_per_connection": 3,
                "auth_failures_per_ip": 4,
            },
        )
        context = world.ca.client_context()
        plain = base64.b64encode

        def wrong(user: bytes = b"alice") -> bytes:
            return b"AUTH PLAIN " + plain(b"\0" + user + b"\0wrong")

        with relay_process(config_file):
            await wait_until(lambda: listening(port), 30)

            def sessions() -> dict[str, Any]:
                out: dict[str, Any] = {}
                first = Raw(port, "127.0.0.5")
                first.cmd(b"EHLO upstream.test")
                first.starttls(context, "relay.lab.test")
                first.cmd(b"EHLO upstream.test")
                out["starttls again"] = first.cmd(b"STARTTLS")
                out["first"] = [first.cmd(wrong()), first.cmd(wrong(b"nobody")), first.cmd(wrong())]
                first.close()
                second = Raw(port, "127.0.0.5")
                second.cmd(b"EHLO upstream.test")
                second.starttls(context, "relay.lab.test")
                second.cmd(b"EHLO upstream.test")
                out["second"] = second.cmd(wrong())  # the address's 4th failure
                second.close()
                third = Raw(port, "127.0.0.5")
                third.cmd(b"EHLO upstream.test")
                third.starttls(context, "relay.lab.test")
                third.cmd(b"EHLO upstream.test")
                right = b"AUTH PLAIN " + plain(b"\0alice\0s3cret")
                out["third"] = third.cmd(right)  # blocked before any password check
                third.close()
                other = Raw(port, "127.0.0.6")
                other.cmd(b"EHLO upstream.test")
                other.starttls(context, "relay.lab.test")
                other.cmd(b"EHLO upstream.test")
                out["other"] = other.cmd(right)
                other.close()
                return out

            out = await asyncio.to_thread(sessions)
        assert out["starttls again"].startswith(b"503")
        one, two, three = out["first"]
        assert one.startswith(b"535 5.7.8")
        assert two.startswith(b"535 5.7.8")
        assert three.startswith(b"421 4.7.0")
        assert out["second"].startswith(b"421 4.7.0")
        assert out["third"].startswith(b"421 4.7.0")
        assert out["other"].startswith(b"235")
        events = log_lines(config_file)
        failed = [e for e in events if e["event"] == "intake.auth_failed"]
        assert len(failed) == 4
        assert all(e["level"] == "warning" for e in failed)
        throttled = [e for e in events if e["event"] == "intake.auth_throttled"]
        assert {e["scope"] for e in throttled} == {"connection", "address"}
        assert all(e["level"] == "warning" for e in throttled)


# --- TLS-Required: No ----------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "plaintext"), [("honour", True), ("ignore", False)])
async def test_tls_required_no_from_a_client_is_honoured_only_as_configured(
    tmp_path: Path, mode: str, plaintext: bool
) -> None:
    """example.org enforces MTA-STS and its MX offers no STARTTLS (as if stripped). A message
    that says ``TLS-Required: No`` goes out in plaintext under ``honour`` and stays queued under
    ``ignore``."""
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await world.add_mx("mx1.example.org", "127.0.0.11", cert=CertKind.NONE)
        world.publish_mx("example.org", [(10, "mx1.example.org")])
        world.publish_policy("example.org", "enforce", ["mx1.example.org"])
        config_file, port = write_config(
            world, tmp_path, tlsrpt={"enabled": False}, relay={"tls_required_no": mode}
        )
        with relay_process(config_file):
            await wait_until(lambda: listening(port), 30)

            def send() -> None:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                    client.sendmail(
                        "app@upstream.test",
                        ["bob@example.org"],
                        b"TLS-Required: No\r\nSubject: low value\r\n\r\nbody\r\n",
                    )

            await asyncio.to_thread(send)

            def attempted() -> bool:
                events = log_lines(config_file)
                return any(e["event"] == "delivery.attempt" for e in events)

            await wait_until(attempted, 60)
            if plaintext:
                await wait_until(lambda: len(mx.messages) == 1, 30)
        if plaintext:
            [message] = mx.messages
            assert not message.tls
        else:
            assert mx.messages == []
            assert len(spooled(config_file)) == 1
            events = log_lines(config_file)
            assert [
                e["mode"] for e in events if e["event"] == "intake.tls_required_no_ignored"
            ] == ["ignore"]


@pytest.mark.parametrize("intake_processes", [0, 1])
async def test_sighup_applies_new_limits(tmp_path: Path, intake_processes: int) -> None:
    """A reload raises max_connections_per_ip for new sessions, with or without intake processes,
    and does not ask for a restart."""
    async with LabWorld(tmp_path / "world").running() as world:
        await enforced_example_org(world)
        relay_keys: dict[str, Any] = {
            "max_connections_per_ip": 1,
            "intake_processes": intake_processes,
        }
        config_file, port = write_config(
            world, tmp_path, tlsrpt={"enabled": False}, relay=relay_keys
        )

        def admitted() -> bool:
            extra = Raw(port, "127.0.0.7")
            extra.close()
            return extra.banner.startswith(b"220")

        with relay_process(config_file) as relay:
            await wait_until(lambda: listening(port), 30)
            held = await asyncio.to_thread(Raw, port, "127.0.0.7")
            try:
                assert held.banner.startswith(b"220")
                assert not await asyncio.to_thread(admitted)
                write_config(
                    world,
                    tmp_path,
                    tlsrpt={"enabled": False},
                    relay={
                        **relay_keys,
                        "max_connections_per_ip": 2,
                        "listen": f"127.0.0.1:{port}",
                    },
                )
                relay.send_signal(signal.SIGHUP)
                await wait_until(admitted, 30)
            finally:
                held.close()
            assert relay.poll() is None
        events = [e["event"] for e in log_lines(config_file)]
        assert "relay.reloaded" in events
        assert "relay.reload_needs_restart" not in events
        assert "intake.process_exited" not in events  # the intake process reloaded, not restarted
