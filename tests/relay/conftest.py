"""Fixtures for relay tests: a resolver on the lab DNS server and recipient MX hosts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack

import dns.asyncresolver
import pytest

from detect.history import MemoryTlsHistoryStore
from lab.dns import LabDns
from lab.mx import CertKind, LabMx
from lab.pki import LabCA
from lab.postfix import PostfixInstance, private_postfix
from lab.world import free_port
from relay.config import DnsConfig
from relay.resolver import make_resolver
from tests.relay.intake_client import spool, start_intake  # noqa: F401  (intake fixtures)


@pytest.fixture
def lab_resolver(lab_dns: LabDns) -> dns.asyncresolver.Resolver:
    """A resolver that asks only the lab DNS server."""
    return make_resolver(DnsConfig(nameservers=(lab_dns.address,), timeout=2))


@pytest.fixture
async def start_mx(lab_ca: LabCA, lab_dns: LabDns) -> AsyncIterator[Callable[..., object]]:
    """`await start_mx("mx1.example.org", "127.0.0.11", cert=CertKind.GOOD, port=0)`: a running
    lab MX named in the lab DNS (A record), stopped at the end of the test."""
    async with AsyncExitStack() as stack:

        async def start(
            name: str,
            host: str,
            *,
            cert: CertKind = CertKind.GOOD,
            port: int = 0,
            rcpt_reply: str | None = None,
            mail_reply: str | None = None,
            drop: str | None = None,
        ) -> LabMx:
            mx = LabMx.with_cert(
                lab_ca,
                name,
                host=host,
                cert=cert,
                rcpt_reply=rcpt_reply,
                mail_reply=mail_reply,
                drop=drop,
            )
            await stack.enter_async_context(mx.running(port))
            lab_dns.add(name, "A", host)
            return mx

        yield start


@pytest.fixture
def history_store() -> MemoryTlsHistoryStore:
    """The remembered-TLS store of `detect.history`, in memory."""
    return MemoryTlsHistoryStore()


@pytest.fixture
def upstream() -> Iterator[PostfixInstance]:
    """A Postfix instance of its own on a free loopback port (tests/relay/postfix_upstream.py
    has its `relayhost` settings), stopped and removed at the end."""
    with private_postfix(f"127.0.0.1:{free_port()}") as instance:
        yield instance
