"""A Postfix smarthost of its own under a temporary directory, for the comparison rows.

Debian's Postfix package, but none of its system instance: `config_directory`, `queue_directory`
and `data_directory` all live under one temporary directory, and `master.cf` lists only the
services a relay needs, with the SMTP server on one loopback address and port.

Every choice that keeps traffic on loopback or makes the run comparable is written next to the
setting it concerns, in `MAIN_CF` below.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# `{...}` fields are filled in by `PostfixSmarthost.write`.
MAIN_CF = """\
# --- an instance of its own: nothing under /etc/postfix or /var/spool/postfix is used ---
compatibility_level = 3.6
config_directory = {config_dir}
queue_directory = {queue_dir}
data_directory = {data_dir}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {base}/postfix.log
maillog_file_prefixes = {base}
myhostname = smarthost.bench.test
mydomain = bench.test
myorigin = $myhostname

# --- loopback only, in and out ---
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# No local delivery, no relaying for anyone but loopback clients.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
# Every recipient domain goes to the sink's address and port. The brackets turn off MX look-ups;
# the next hop is an IP literal, so no DNS query is ever made for it.
relayhost =
transport_maps = texthash:{config_dir}/transport
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
# Do not send bounces or delay notices anywhere.
notify_classes =
delay_warning_time = 0

# --- the TLS policy under test: verified TLS to the sink, like an MTA-STS enforce policy ---
smtp_tls_security_level = secure
# The next hop is an address, so say which name its certificate must carry (what an MTA-STS
# policy's `mx:` line gives).
smtp_tls_policy_maps = texthash:{config_dir}/tls_policy
smtp_tls_CAfile = {ca_file}
smtp_tls_session_cache_database = btree:${{data_directory}}/smtp_scache
smtp_tls_loglevel = 0

# --- the same load shape as stsguard: 20 parallel deliveries to the one destination ---
default_destination_concurrency_limit = 20
smtp_destination_concurrency_limit = 20
"""

# Only the services a relay uses; no chroot (the instance does not populate one).
MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
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


@dataclass
class PostfixSmarthost:
    """One Postfix instance under `base`, listening on `listen` (``127.0.0.1:PORT``)."""

    base: Path
    listen: str
    sink_host: str
    sink_port: int
    sink_name: str
    ca_file: Path

    @property
    def config_dir(self) -> Path:
        return self.base / "etc"

    def write(self) -> None:
        """Write main.cf and master.cf and create the queue with the right owners."""
        config_dir, queue_dir, data_dir = (
            self.base / "etc",
            self.base / "spool",
            self.base / "data",
        )
        for d in (config_dir, queue_dir, data_dir):
            d.mkdir(parents=True, exist_ok=True)
        # The postfix user must reach its queue and data directories through the temp path.
        for d in (self.base, *self.base.parents):
            if d == Path("/"):
                break
            mode = d.stat().st_mode
            if not mode & 0o001:
                os.chmod(d, mode | 0o011)
        shutil.chown(data_dir, "postfix")
        # The CA must be readable by the postfix user.
        ca_copy = config_dir / "lab-ca.pem"
        shutil.copyfile(self.ca_file, ca_copy)
        ca_copy.chmod(0o644)
        (config_dir / "main.cf").write_text(
            MAIN_CF.format(
                config_dir=config_dir,
                queue_dir=queue_dir,
                data_dir=data_dir,
                base=self.base,
                sink_host=self.sink_host,
                sink_port=self.sink_port,
                sink_name=self.sink_name,
                ca_file=ca_copy,
            )
        )
        # texthash: tables are read as text, no postmap step.
        target = f"[{self.sink_host}]:{self.sink_port}"
        (config_dir / "transport").write_text(f"*\tsmtp:{target}\n")
        (config_dir / "tls_policy").write_text(f"{target}\tsecure match={self.sink_name}\n")
        (config_dir / "master.cf").write_text(MASTER_CF.format(listen=self.listen))
        log = self.base / "postfix.log"
        log.touch()
        shutil.chown(log, "postfix")
        self._postfix("set-permissions")
        self._postfix("check")

    def _postfix(self, *args: str) -> None:
        subprocess.run(
            ["postfix", "-c", str(self.config_dir), *args],
            check=True,
            capture_output=True,
            text=True,
        )

    def start(self) -> None:
        self._postfix("start")

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
        """No message left in incoming, active or deferred."""
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
