"""A real Postfix 3.7 (Debian's) with `smtp_tls_policy_maps = socketmap:inet:...:postfix` (and
`socketmap:unix:...:postfix`) pointing at `stsguard socketmap`, delivering through the lab (SM-02).

Postfix looks up MX records itself here, so its smtp(8) runs chrooted in the instance's queue
directory with a resolv.conf naming the lab DNS (on port 53 of its own loopback address): no
look-up reaches the system resolver. Postfix's TLS log lines say what it did.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab.attacker import Attacker, AttackMode
from lab.dns import LabDns
from lab.mx import CertKind, LabMx
from lab.postfix import PostfixInstance
from lab.world import LabWorld, free_port, to_toml, wait_until
from tests.relay.socketmap.client import connect_to

pytestmark = pytest.mark.skipif(
    shutil.which("postfix") is None or os.geteuid() != 0,
    reason="needs Debian's postfix and root (.ci/run installs it)",
)

DNS_HOST = "127.0.53.53"  # glibc's resolver asks port 53 only

MAIN_CF = """\
myhostname = postfix.upstream.test
smtp_dns_support_level = enabled
smtp_host_lookup = dns
smtp_tcp_port = {mx_port}
smtp_tls_security_level = may
smtp_tls_CAfile = {ca_file}
smtp_tls_loglevel = 1
smtp_tls_policy_maps = socketmap:{table}:postfix
"""


class World53(LabWorld):
    """The lab world with its DNS on port 53 of `DNS_HOST`, where Postfix's resolver can ask."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.dns = LabDns(host=DNS_HOST)

    async def start(self) -> None:
        await self.keep(self.dns.running(53))
        await self.keep(self.policy_host.running())
        self.mx_port = free_port("127.0.0.1")


def chroot_smtp(postfix: PostfixInstance) -> None:
    """smtp(8) chrooted to the queue directory, with the lab DNS in its resolv.conf."""
    master = postfix.config_dir / "master.cf"
    lines = master.read_text().splitlines()
    lines = [
        "smtp      unix  -       -       y       -       -       smtp"
        if line.startswith("smtp ")
        else line
        for line in lines
    ]
    master.write_text("\n".join(lines) + "\n")
    etc = postfix.base / "spool" / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {DNS_HOST}\noptions attempts:1 timeout:2\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    (etc / "nsswitch.conf").write_text("hosts: files dns\n")
    shutil.copy("/etc/services", etc / "services")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    try:
        async with World53(tmp_path / "world").running() as started:
            yield started
    except OSError as exc:
        pytest.skip(f"cannot serve DNS on {DNS_HOST}:53: {exc}")


async def add_domain(
    world: LabWorld, domain: str, ip: str, *, cert: CertKind = CertKind.GOOD, mode: str | None
) -> LabMx:
    mx = await world.add_mx(f"mx.{domain}", ip, cert=cert)
    world.publish_mx(domain, [(10, f"mx.{domain}")])
    if mode is not None:
        world.publish_policy(domain, mode, [f"mx.{domain}"])
    return mx


def send(port: int, rcpts: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(
            "app@upstream.test", rcpts, b"Subject: via postfix\r\n\r\nhello through the map\r\n"
        )


@pytest.mark.parametrize("socket_kind", ["inet", "unix"])
async def test_postfix_37_delivers_under_the_socketmap_policies(
    world: LabWorld, tmp_path: Path, socket_kind: str
) -> None:
    enforce = await add_domain(world, "enforce.test", "127.0.5.11", mode="enforce")
    testing = await add_domain(world, "testing.test", "127.0.5.12", mode="testing")
    none = await add_domain(world, "nopolicy.test", "127.0.5.13", mode=None)
    wrong = await add_domain(
        world, "wrongcert.test", "127.0.5.14", cert=CertKind.WRONG_NAME, mode="enforce"
    )
    stripped = await add_domain(world, "strip.test", "127.0.5.15", mode="enforce")
    attacker = Attacker(
        ("127.0.5.15", world.mx_port),
        AttackMode.STRIP,
        host="127.0.5.25",
        port=world.mx_port,
        mx_name="mx.strip.test",
        ca=world.ca,
    )
    await world.keep(attacker.running())
    world.dns.set("mx.strip.test", "A", ["127.0.5.25"])

    # Not under tmp_path: pytest makes /tmp/pytest-of-root 0700 again whenever a session starts,
    # and the postfix user must reach its queue and data directories all along.
    base = Path(tempfile.mkdtemp(prefix="stsguard-postfix-"))
    postfix = PostfixInstance(base, "127.0.0.1:0")
    if socket_kind == "unix":
        # smtp(8) connects from inside its chroot (the queue directory): the path as seen there.
        (base / "spool" / "stsguard").mkdir(parents=True)
        listen, table = str(base / "spool" / "stsguard" / "map.sock"), "unix:/stsguard/map.sock"
    else:
        listen = f"127.0.0.1:{free_port()}"
        table = f"inet:{listen}"
    config = tmp_path / "stsguard.toml"
    config.write_text(
        to_toml(world.relay_settings(tmp_path / "state", socketmap={"listen": listen}))
    )
    log = (tmp_path / "socketmap.log").open("wb")
    socketmap = subprocess.Popen(  # noqa: ASYNC220  (a server for the whole test)
        [sys.executable, "-m", "relay.cli", "socketmap", "--config", str(config)],
        stdout=log,
        stderr=log,
    )
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    await (await connect_to(listen)).ask("postfix", "enforce.test")
                    break
                except OSError:
                    await asyncio.sleep(0.1)
        for attempt in range(3):
            # A port picked just before the start; another process may still take it first.
            postfix.listen = f"127.0.0.1:{free_port()}"
            postfix.write(
                MAIN_CF.format(mx_port=world.mx_port, ca_file=world.ca.ca_file, table=table)
            )
            chroot_smtp(postfix)
            try:
                postfix.start()
                break
            except RuntimeError as exc:
                postfix.stop()
                if attempt == 2:
                    pytest.fail(f"{exc}; Postfix's log:\n{postfix.log_tail(30)}")
        rcpts = [f"bob@{d}" for d in ("enforce", "testing", "nopolicy", "wrongcert", "strip")]
        await asyncio.to_thread(
            send, int(postfix.listen.rpartition(":")[2]), [f"{r}.test" for r in rcpts]
        )

        def settled() -> bool:
            text = postfix.log_tail(400)
            return all(f"to=<{r}.test>" in text for r in rcpts)

        try:
            await wait_until(settled, 60)
        except TimeoutError:
            pytest.fail(f"Postfix did not finish; its log:\n{postfix.log_tail(60)}")
        text = postfix.log_tail(400)
    finally:
        postfix.stop()
        shutil.rmtree(base, ignore_errors=True)
        socketmap.send_signal(signal.SIGTERM)
        await asyncio.to_thread(socketmap.wait, 20)

    statuses = {
        rcpt: line.partition("status=")[2]
        for line in text.splitlines()
        for rcpt in ("enforce", "testing", "nopolicy", "wrongcert", "strip")
        if f"to=<bob@{rcpt}.test>" in line
    }
    why = f"Postfix's log:\n{text[-4000:]}"
    assert "Verified TLS connection established to mx.enforce.test" in text, why
    assert statuses["enforce"].startswith("sent"), why
    assert statuses["testing"].startswith("sent"), why
    assert statuses["nopolicy"].startswith("sent"), why
    assert statuses["wrongcert"].startswith("deferred"), why
    assert statuses["strip"].startswith("deferred (TLS is required"), why
    assert [len(enforce.messages), len(testing.messages), len(none.messages)] == [1, 1, 1]
    assert not wrong.messages
    assert not stripped.messages
