"""A real Postfix with `relayhost` pointing at stsguard delivers through it to a recipient MX.

Postfix runs as its own instance under the test's temporary directory (nothing of the system
instance is used), listening on loopback only; `.ci/run` installs Debian's postfix when missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from lab.mx import CertKind
from lab.world import LabWorld, free_port, wait_until
from relay.app import Relay

pytestmark = pytest.mark.skipif(
    shutil.which("postfix") is None or os.geteuid() != 0,
    reason="needs Debian's postfix and root (.ci/run installs it)",
)

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {base}/etc
queue_directory = {base}/spool
data_directory = {base}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {base}/postfix.log
maillog_file_prefixes = {base}
myhostname = postfix.upstream.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
# The point of the test: everything goes to stsguard, by address (no DNS).
relayhost = [127.0.0.1]:{relay_port}
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
notify_classes =
"""

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


@pytest.fixture
def postfix(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A Postfix instance under tmp_path; yields (base, smtpd port). Stopped at the end."""
    base = tmp_path / "postfix"
    for sub in ("etc", "spool", "data"):
        (base / sub).mkdir(parents=True)
    for d in (base, *base.parents):  # the postfix user must traverse to its queue
        if d == Path("/"):
            break
        d.chmod(d.stat().st_mode | 0o011)
    shutil.chown(base / "data", "postfix")
    (base / "postfix.log").touch()
    shutil.chown(base / "postfix.log", "postfix")
    port = free_port()
    yield base, port
    subprocess.run(["postfix", "-c", str(base / "etc"), "stop"], capture_output=True, check=False)


def start_postfix(base: Path, port: int, relay_port: int) -> None:
    (base / "etc" / "main.cf").write_text(MAIN_CF.format(base=base, relay_port=relay_port))
    (base / "etc" / "master.cf").write_text(MASTER_CF.format(port=port))
    for command in ("set-permissions", "check", "start"):
        run = subprocess.run(
            ["postfix", "-c", str(base / "etc"), command], capture_output=True, text=True
        )
        assert run.returncode == 0, f"postfix {command}: {run.stderr}"


def send_to_postfix(port: int) -> None:
    msg = EmailMessage()
    msg["From"] = "app@upstream.test"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "through postfix"
    msg.set_content("hello via postfix and stsguard\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("app@upstream.test", ["bob@example.org"], msg.as_bytes(policy=SMTP))


async def test_postfix_relayhost_delivers_through_stsguard(
    tmp_path: Path, postfix: tuple[Path, int]
) -> None:
    base, port = postfix
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await world.add_mx("mx1.example.org", "127.0.0.11", cert=CertKind.GOOD)
        world.publish_mx("example.org", [(10, "mx1.example.org")])
        world.publish_policy("example.org", "enforce", ["mx1.example.org"])
        relay = Relay(world.relay_config(tmp_path / "state"))
        async with relay.running():
            start_postfix(base, port, relay.config.relay.listen_address[1])
            await asyncio.to_thread(send_to_postfix, port)
            try:
                await wait_until(lambda: bool(mx.messages), 60)
            except TimeoutError:
                log = (base / "postfix.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"nothing reached the MX; postfix log:\n{log}")
    received = mx.messages[0]
    assert received.tls is True
    assert received.rcpt_tos == ("bob@example.org",)
    assert b"through postfix" in received.data
    assert b"postfix.upstream.test" in received.data  # Postfix's Received: header came along
