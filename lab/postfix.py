"""A Postfix instance of its own under one directory, on loopback: for the interop test and the
benchmarks. Debian's Postfix package, none of its system instance: `config_directory`,
`queue_directory` and `data_directory` all live under `base`, and `master.cf` lists only the
services a relay needs, with the SMTP server on one loopback address and port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The part of main.cf that makes it an instance of its own; the caller adds its routing and TLS.
INSTANCE_CF = """\
compatibility_level = 3.6
config_directory = {base}/etc
queue_directory = {base}/spool
data_directory = {base}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {base}/postfix.log
maillog_file_prefixes = {base}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# No local delivery; relaying only for loopback clients.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
# No DNS for next hops (they are given as [address]:port), and no bounces sent anywhere.
smtp_host_lookup = native
smtp_dns_support_level = disabled
notify_classes =
delay_warning_time = 0
"""

# Only the services a relay uses; no chroot (the instance does not populate one).
MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
tlsproxy  unix  -       -       n       -       0       tlsproxy
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """One Postfix under `base` whose smtpd listens on `listen` (``127.0.0.1:PORT``)."""

    def __init__(self, base: Path, listen: str) -> None:
        self.base = Path(base)
        self.listen = listen

    @property
    def config_dir(self) -> Path:
        return self.base / "etc"

    def prepare(self) -> None:
        """The directories, with the owners and modes the postfix user needs."""
        for sub in ("etc", "spool", "data"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        # The postfix user must reach its queue and data directories through the temp path.
        for d in (self.base, *self.base.parents):
            if d == Path("/"):
                break
            mode = d.stat().st_mode
            if not mode & 0o001:
                os.chmod(d, mode | 0o011)
        shutil.chown(self.base / "data", "postfix")
        log = self.base / "postfix.log"
        log.touch()
        shutil.chown(log, "postfix")

    def write(self, main_cf: str) -> None:
        """main.cf (the instance part plus `main_cf`) and master.cf; then check them."""
        self.prepare()
        (self.config_dir / "main.cf").write_text(INSTANCE_CF.format(base=self.base) + main_cf)
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(listen=self.listen))
        self.postfix("set-permissions")
        self.postfix("check")

    def postfix(self, *args: str) -> None:
        """Run `postfix -c CONFIG_DIR ARGS`; a failure raises with Postfix's own words."""
        run = subprocess.run(
            ["postfix", "-c", str(self.config_dir), *args], capture_output=True, text=True
        )
        if run.returncode != 0:
            detail = (run.stderr.strip() or self.log_tail(5)).splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"postfix {' '.join(args)} failed: {detail[0]}")

    def start(self) -> None:
        self.postfix("start")

    def stop(self) -> None:
        subprocess.run(
            ["postfix", "-c", str(self.config_dir), "stop"], capture_output=True, check=False
        )

    def master_pid(self) -> int | None:
        """The pid of this instance's master process, from its pid file."""
        pid_file = self.base / "spool" / "pid" / "master.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def queue_is_empty(self) -> bool:
        """No message left in incoming, active, deferred or maildrop."""
        for sub in ("incoming", "active", "deferred", "maildrop"):
            d = self.base / "spool" / sub
            if d.exists() and any(p.is_file() for p in d.rglob("*")):
                return False
        return True

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.base / "postfix.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def private_postfix(listen: str) -> Iterator[PostfixInstance]:
    """A Postfix instance in a directory of its own under the system temp dir, stopped and
    removed at the end. Not under pytest's base temp: another pytest session on the machine sets
    that directory's parent back to 0700 when it starts, and the postfix user then cannot reach
    its queue and data directories (`master.lock`, the PRNG file) mid-test."""
    base = Path(tempfile.mkdtemp(prefix="stsguard-postfix-"))
    instance = PostfixInstance(base / "postfix", listen)
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(base, ignore_errors=True)
