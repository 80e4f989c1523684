"""A Postfix smarthost of its own under a temporary directory, for the comparison rows.

Debian's Postfix package, but none of its system instance: `config_directory`, `queue_directory`
and `data_directory` all live under one temporary directory, and `master.cf` lists only the
services a relay needs, with the SMTP server on one loopback address and port.

Every choice that keeps traffic on loopback or makes the run comparable is written next to the
setting it concerns: the instance part in `lab.postfix` (shared with the interop test), the
routing and TLS part in `MAIN_CF` below.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lab.postfix import PostfixInstance

# Added to `lab.postfix.INSTANCE_CF` (the instance of its own, loopback only, no DNS for next
# hops, no bounces); `{...}` fields are filled in by `PostfixSmarthost.write`.
MAIN_CF = """\
myhostname = smarthost.bench.test
mydomain = bench.test
myorigin = $myhostname
# Every recipient domain goes to the sink's address and port. The brackets turn off MX look-ups;
# the next hop is an IP literal, so no DNS query is ever made for it.
relayhost =
transport_maps = texthash:{config_dir}/transport

# --- the TLS policy under test: verified TLS to the sink, like an MTA-STS enforce policy ---
smtp_tls_security_level = secure
# The next hop is an address, so say which name its certificate must carry (what an MTA-STS
# policy's `mx:` line gives).
smtp_tls_policy_maps = texthash:{config_dir}/tls_policy
smtp_tls_CAfile = {ca_file}
smtp_tls_session_cache_database = btree:${{data_directory}}/smtp_scache
smtp_tls_loglevel = 0
# Keep TLS connections to the sink open between deliveries (through tlsproxy), as stsguard's
# pool does: each message does not pay for a TLS handshake.
smtp_tls_connection_reuse = yes

# --- the same load shape as stsguard: 20 parallel deliveries to the one destination ---
default_destination_concurrency_limit = 20
smtp_destination_concurrency_limit = 20
"""


class PostfixSmarthost(PostfixInstance):
    """The comparison smarthost: everything to the sink, verified TLS with the lab CA."""

    def __init__(
        self,
        base: Path,
        listen: str,
        sink_host: str,
        sink_port: int,
        sink_name: str,
        ca_file: Path,
    ) -> None:
        super().__init__(base, listen)
        self.sink_host, self.sink_port, self.sink_name = sink_host, sink_port, sink_name
        self.ca_file = ca_file

    def write(self, main_cf: str = "") -> None:
        """Write main.cf, master.cf and the two tables, and create the queue."""
        self.prepare()
        config_dir = self.config_dir
        # The CA must be readable by the postfix user.
        ca_copy = config_dir / "lab-ca.pem"
        shutil.copyfile(self.ca_file, ca_copy)
        ca_copy.chmod(0o644)
        # texthash: tables are read as text, no postmap step.
        target = f"[{self.sink_host}]:{self.sink_port}"
        (config_dir / "transport").write_text(f"*\tsmtp:{target}\n")
        (config_dir / "tls_policy").write_text(f"{target}\tsecure match={self.sink_name}\n")
        super().write(MAIN_CF.format(config_dir=config_dir, ca_file=ca_copy) + main_cf)
