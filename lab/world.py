"""A small internet on loopback: lab DNS, lab CA, HTTPS policy host and recipient MX hosts.

Every MX host (and every attacker standing in front of one) listens on the same port on its own
127.0.0.x address, because the relay has one `delivery.port`. `relay_config()` gives the relay a
config that resolves through the lab DNS and trusts the lab CA, so it finds MX and policy hosts the
way it does in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from lab.dns import LabDns
from lab.mx import CertKind, LabMx
from lab.pki import LabCA
from lab.policy_host import PolicyHost
from lab.unbound import LabUnbound
from relay.config import Config, config_from_dict


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def wait_until(check: Callable[[], bool], within: float = 15.0) -> None:
    """Poll `check` until it is true; TimeoutError after `within` seconds. The lab's parts run
    in other tasks and processes, so there is no single event to wait on."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def policy_text(mode: str, mx: list[str], max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *[f"mx: {pattern}" for pattern in mx]]
    return "\r\n".join([*lines, f"max_age: {max_age}", ""])


class LabWorld:
    """DNS, CA, policy host and MX hosts on loopback, started and stopped together."""

    def __init__(self, directory: Path, *, validating: bool = False) -> None:
        """`validating` puts a real unbound (`lab/unbound.py`) between the relay and the lab
        DNS, so DNSSEC and DANE work as behind a local validating resolver."""
        self.directory = Path(directory)
        self.dns = LabDns()
        self.unbound: LabUnbound | None = (
            LabUnbound(self.dns, self.directory / "unbound") if validating else None
        )
        self.ca = LabCA(self.directory / "pki")
        self.policy_host = PolicyHost(self.ca)
        self.mx_port = 0
        self.mx_hosts: dict[str, LabMx] = {}
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        await self._stack.enter_async_context(self.dns.running())
        if self.unbound is not None:
            await self._stack.enter_async_context(self.unbound.running())
        await self._stack.enter_async_context(self.policy_host.running())
        self.mx_port = free_port("127.0.0.1")

    async def stop(self) -> None:
        await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LabWorld]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def keep(self, running: contextlib.AbstractAsyncContextManager[Any]) -> None:
        """Start another part (e.g. a report collector) and stop it with the world."""
        await self._stack.enter_async_context(running)

    async def add_mx(self, name: str, ip: str, *, cert: CertKind = CertKind.GOOD) -> LabMx:
        """A recipient MX named `name` at `ip`:`mx_port`, in the lab DNS."""
        return await self.serve_mx(LabMx.with_cert(self.ca, name, host=ip, cert=cert))

    async def serve_mx(self, mx: LabMx) -> LabMx:
        """Run `mx` (one made with its own TLS context) at its address:`mx_port` until the world
        stops, its `hostname` named in the lab DNS."""
        await self._stack.enter_async_context(mx.running(self.mx_port))
        self.dns.set(mx.hostname, "A", [mx.host])
        self.mx_hosts[mx.hostname] = mx
        return mx

    def publish_policy(
        self, domain: str, mode: str, mx: list[str], *, policy_id: str = "1", max_age: int = 86400
    ) -> None:
        """The `_mta-sts` TXT record and the HTTPS policy of `domain`."""
        self.dns.set(f"_mta-sts.{domain}", "TXT", [f"v=STSv1; id={policy_id};"])
        self.dns.set(f"mta-sts.{domain}", "A", [self.policy_host.host])
        self.policy_host.set_policy(domain, policy_text(mode, mx, max_age))

    def publish_mx(self, domain: str, hosts: list[tuple[int, str]]) -> None:
        """The MX records of `domain`: (preference, host name) pairs."""
        self.dns.set(domain, "MX", [f"{pref} {host}." for pref, host in hosts])

    def publish_tlsa(self, mx_host: str, records: list[str]) -> None:
        """The TLSA records of `mx_host` (`_25._tcp.<mx_host>`), signed like the whole zone."""
        self.dns.set(f"_25._tcp.{mx_host}", "TLSA", records)

    @property
    def nameserver(self) -> str:
        """What the relay asks: unbound when validating, else the lab DNS itself."""
        return self.unbound.address if self.unbound is not None else self.dns.address

    def publish_tlsrpt(self, domain: str, rua: str) -> None:
        self.dns.set(f"_smtp._tls.{domain}", "TXT", [f"v=TLSRPTv1; rua={rua}"])

    def relay_config(self, state_dir: Path, **sections: dict[str, Any]) -> Config:
        """A relay config for this world; `sections` override keys, e.g. ``detect={...}``."""
        return config_from_dict(self.relay_settings(state_dir, **sections))

    def relay_toml(self, state_dir: Path, **sections: dict[str, Any]) -> str:
        """The same config as TOML text, for a relay run as its own process."""
        return to_toml(self.relay_settings(state_dir, **sections))

    def relay_settings(self, state_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
        raw: dict[str, dict[str, Any]] = {
            "relay": {
                "listen": f"127.0.0.1:{free_port()}",
                "hostname": "relay.lab.test",
                "state_dir": str(state_dir),
                "log_format": "json",
            },
            "delivery": {
                "port": self.mx_port,
                "retry_initial": "60s",
                "connect_timeout": "5s",
                "command_timeout": "10s",
            },
            "dns": {"nameservers": [self.nameserver], "timeout": "2s"},
            "tls": {"ca_file": str(self.ca.ca_file)},
            "mtasts": {
                "https_port": self.policy_host.port,
                "fetch_timeout": "15s",
                "answer_ttl": "0s",  # scenarios change records and must be seen at once
            },
            "tlsrpt": {
                "organization_name": "stsguard lab",
                "contact_info": "tlsrpt@lab.test",
            },
        }
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        return raw


def to_toml(tables: dict[str, Any]) -> str:
    """TOML text for a config made of tables of strings, numbers, booleans and string lists."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(item) for item in v) + "]"
        return json.dumps(str(v))

    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {value(v)}" for key, v in table.items()]
        lines.append("")
    return "\n".join(lines)
