"""A real validating resolver for the lab: unbound (the Debian package) on a loopback port.

It runs in the foreground as the current user (no chroot, no daemon, a temporary config directory),
sends every query to the lab DNS as the stub for the root zone, and validates the answers against
the lab's trust anchor (`LabDns.trust_anchor`). The relay asks it, so DANE sees secure, insecure
and bogus answers the way it does behind a local unbound in production.

    async with LabUnbound(lab_dns, directory).running() as unbound:
        nameservers = [unbound.address]
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode


class Authority(Protocol):
    """The authoritative server unbound stubs the root to, and the key it must trust
    (`lab.dns.LabDns`, or the compose lab's dns service named by address)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def trust_anchor(self) -> str: ...


MISSING = (
    "unbound is not installed (Debian: apt-get install unbound); the DANE scenarios need a "
    "validating resolver"
)


def unbound_path() -> str | None:
    """The unbound binary, or None when it is not installed."""
    return shutil.which("unbound") or (
        "/usr/sbin/unbound" if Path("/usr/sbin/unbound").exists() else None
    )


def _free_udp_tcp_port(host: str) -> int:
    for _attempt in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both UDP and TCP")


class LabUnbound:
    """unbound validating for the lab DNS; `insecure` names subtrees it must not validate."""

    def __init__(
        self,
        lab_dns: Authority,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        insecure: Sequence[str] = (),
        max_ttl: int = 0,
        port: int = 0,
        access: Sequence[str] = ("127.0.0.0/8",),
    ) -> None:
        """`max_ttl` caps how long unbound keeps answers: 0 (not at all) by default, because
        scenarios change records between messages; benchmarks raise it. `access` lists the
        networks whose queries it answers."""
        self.lab_dns = lab_dns
        self.access = tuple(access)
        self.directory = Path(directory)
        self.host = host
        self.insecure = tuple(insecure)
        self.max_ttl = max_ttl
        self.port = port
        self._process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def config_text(self) -> str:
        lines = [
            "server:",
            f"  interface: {self.host}",
            f"  port: {self.port}",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{self.directory}"',
            f'  pidfile: "{self.directory / "unbound.pid"}"',
            "  use-syslog: no",
            '  logfile: ""',
            "  verbosity: 1",
            "  val-log-level: 2",
            "  num-threads: 1",
            "  do-ip6: no",
            "  do-not-query-localhost: no",
            *[f"  access-control: {net} allow" for net in self.access],
            '  module-config: "validator iterator"',
            f'  trust-anchor: "{self.lab_dns.trust_anchor}"',
            "  qname-minimisation: no",
            "  aggressive-nsec: no",
            "  harden-below-nxdomain: no",
            # Scenarios change records between messages: remember nothing for long.
            f"  cache-max-ttl: {self.max_ttl}",
            f"  cache-max-negative-ttl: {self.max_ttl}",
            f"  val-bogus-ttl: {self.max_ttl}",
            "  infra-host-ttl: 60",
            # RFC 6761 names are answered locally by default; the lab uses them.
            '  local-zone: "test." nodefault',
            '  local-zone: "invalid." nodefault',
            *[f'  domain-insecure: "{name}"' for name in self.insecure],
            "remote-control:",
            "  control-enable: no",
            "stub-zone:",
            '  name: "."',
            f"  stub-addr: {self.lab_dns.host}@{self.lab_dns.port}",
            "",
        ]
        return "\n".join(lines)

    async def start(self) -> None:
        binary = unbound_path()
        if binary is None:
            raise RuntimeError(MISSING)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_udp_tcp_port(self.host)
        conf = self.directory / "unbound.conf"
        conf.write_text(self.config_text())
        log_file = (self.directory / "unbound.log").open("wb")
        self._process = await asyncio.create_subprocess_exec(
            binary, "-d", "-c", str(conf), stdout=log_file, stderr=log_file
        )
        log_file.close()
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, within: float = 20.0) -> None:
        query = dns.message.make_query(".", "SOA", want_dnssec=True)
        async with asyncio.timeout(within):
            while True:
                if self._process is not None and self._process.returncode is not None:
                    raise RuntimeError(f"unbound exited at start: {self.log_tail()}")
                with contextlib.suppress(dns.exception.DNSException, OSError):
                    ask = "127.0.0.1" if self.host == "0.0.0.0" else self.host
                    reply = await dns.asyncquery.udp(query, ask, port=self.port, timeout=1)
                    if reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AD:
                        return
                await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 5) -> str:
        path = self.directory / "unbound.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LabUnbound]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()
