"""SM-01/SM-02 end to end on loopback: the socketmap server over TCP and a Unix socket, answering
from the lab's DNS and policy host through the relay's PolicyService."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from lab.policy_host import Failure
from lab.world import LabWorld, wait_until
from mtasts.cache import MemoryPolicyStore
from mtasts.service import PolicyService
from relay.config import DnsConfig, config_from_dict
from relay.resolver import make_resolver
from relay.socketmap.lookup import MapLookup
from relay.socketmap.metrics import SocketmapMetrics
from relay.socketmap.netstring import encode
from relay.socketmap.server import SocketmapServer
from relay.socketmap.service import SocketmapService
from relay.tls import client_context
from tests.relay.socketmap.client import Client, connect_to

SECURE = "OK secure match=mx1.example.org servername=hostname"


@contextlib.asynccontextmanager
async def serving(
    world: LabWorld, listen: str = "127.0.0.1:0", **kw: float
) -> AsyncIterator[tuple[SocketmapServer, MapLookup, CollectorRegistry]]:
    resolver = make_resolver(DnsConfig(nameservers=(world.nameserver,), timeout=2))
    policies = PolicyService(
        MemoryPolicyStore(),
        resolver,
        client_context(str(world.ca.ca_file)),
        https_port=world.policy_host.port,
        fetch_timeout=kw.pop("fetch_timeout", 5.0),
    )
    config = config_from_dict({"domains": kw.pop("domains", {})})
    lookup = MapLookup(policies, resolver, lambda: config, budget=kw.pop("budget", 5.0))
    registry = CollectorRegistry()
    server = SocketmapServer(
        listen,
        SocketmapService(lookup, SocketmapMetrics(registry)),
        **kw,  # type: ignore[arg-type]
    )
    await server.start()
    try:
        yield server, lookup, registry
    finally:
        await server.stop()
        await lookup.close()


async def connect(server: SocketmapServer) -> Client:
    return await connect_to(server.address)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    async with LabWorld(tmp_path / "world").running() as w:
        w.publish_mx("example.org", [(10, "mx1.example.org")])
        w.publish_policy("example.org", "enforce", ["mx1.example.org"])
        w.publish_policy("testing.example", "testing", ["mx1.testing.example"])
        yield w


async def test_sm01_persistent_connection_many_requests(world: LabWorld) -> None:
    async with serving(world) as (server, _, registry):
        client = await connect(server)
        assert await client.ask("postfix", "example.org") == SECURE
        assert await client.ask("postfix", "testing.example") == "NOTFOUND "
        assert await client.ask("postfix", "nothing.example") == "NOTFOUND "
        assert await client.ask("postfix", "[mx1.example.org]:25") == "NOTFOUND "
        assert await client.ask("postfix", ".example.org") == "NOTFOUND "
        assert (await client.ask("other", "example.org")).startswith("PERM ")
        assert (await client.ask("tlsrpt", "example.org")).startswith(
            SECURE + " policy_type=sts policy_domain=example.org"
        )
        for answer, count in [("secure", 2), ("testing", 1), ("no-policy", 1), ("not-a-domain", 2)]:
            got = registry.get_sample_value("stsguard_socketmap_queries_total", {"answer": answer})
            assert got == count, answer
        assert registry.get_sample_value("stsguard_socketmap_query_seconds_count") == 7


async def test_sm02_warm_answer_costs_no_dns_and_is_logged_once(world: LabWorld) -> None:
    async with serving(world) as (server, lookup, _):
        client = await connect(server)
        with capture_logs() as logs:
            assert await client.ask("postfix", "example.org") == SECURE
            asked = sum(world.dns.queries.values())
            store_reads: list[str] = []
            store = lookup.policies.store
            read = store.get
            store.get = lambda d: store_reads.append(d) or read(d)  # type: ignore[method-assign]
            for _ in range(20):
                assert await client.ask("postfix", "example.org") == SECURE
        assert sum(world.dns.queries.values()) == asked  # no DNS
        assert store_reads == []  # and no state-store read
        assert lookup.lookups == 1
        assert [e["domain"] for e in logs if e["event"] == "socketmap.answer"] == ["example.org"]


async def test_sm02_cold_burst_is_one_txt_and_one_https(world: LabWorld) -> None:
    async with serving(world) as (server, _, _):
        clients = [await connect(server) for _ in range(20)]
        replies = await asyncio.gather(*(c.ask("postfix", "example.org") for c in clients))
    assert set(replies) == {SECURE}
    assert world.dns.count("_mta-sts.example.org", "TXT") == 1
    assert world.policy_host.requests["example.org"] == 1
    # The MX RRset is not signed: DANE cannot apply, so no address (or TLSA) look-ups.
    assert world.dns.count("example.org", "MX") == 1
    assert world.dns.count("mx1.example.org", "A") == 0
    assert world.dns.count("mx1.example.org", "AAAA") == 0


async def test_sm02_slow_fetch_is_answered_within_the_budget(world: LabWorld) -> None:
    world.policy_host.set_failure("example.org", Failure.STALL)
    async with serving(world, budget=0.3, fetch_timeout=30) as (server, _, _):
        client = await connect(server)
        # Nothing cached, the fetch still running: deliver as without a policy (RFC 8461 5).
        assert await asyncio.wait_for(client.ask("postfix", "example.org"), 3) == "NOTFOUND "


@pytest.mark.parametrize(
    "garbage",
    [b"3:abc;", b"hello world\r\n", b"20000:"],
    ids=["unterminated", "text", "over-long"],
)
async def test_sm01_malformed_or_overlong_query_closes_the_connection(
    world: LabWorld, garbage: bytes
) -> None:
    async with serving(world) as (server, _, _):
        client = await connect(server)
        with capture_logs() as logs:
            client.writer.write(garbage)
            await client.writer.drain()
            assert await client.closed()
        assert [e["event"] for e in logs] == ["socketmap.protocol_error"]


async def test_sm01_a_remembered_request_after_a_partial_frame_is_decoded(
    world: LabWorld,
) -> None:
    """A read that is byte for byte a remembered request is answered undecoded only at a frame
    boundary: after a partial frame it continues that frame (here malformed: closed)."""
    async with serving(world) as (server, _, _):
        client = await connect(server)
        assert await client.ask("postfix", "example.org") == SECURE  # now remembered
        client.writer.write(b"5:ab")
        await client.writer.drain()
        await wait_until(lambda: any(c.decoder.pending for c in server.connections), 5)
        with capture_logs() as logs:
            client.writer.write(encode(b"postfix example.org"))
            await client.writer.drain()
            assert await client.closed()
        assert [e["event"] for e in logs] == ["socketmap.protocol_error"]


async def test_sm01_a_netstring_that_is_no_request_is_perm(world: LabWorld) -> None:
    async with serving(world) as (server, _, registry):
        client = await connect(server)
        client.writer.write(encode(b"no-space-here"))
        replies: list[bytes] = []
        while not replies:
            replies = client.decoder.feed(await client.reader.read(4096))
        assert replies[0].startswith(b"PERM ")
        assert await client.ask("postfix", "example.org") == SECURE  # still usable
        got = registry.get_sample_value("stsguard_socketmap_queries_total", {"answer": "malformed"})
        assert got == 1


async def test_sm02_override_is_answered_without_a_look_up(world: LabWorld) -> None:
    domains = {"example.org": {"tls": "encrypt"}, "other.example": {"tls": "dane-only"}}
    async with serving(world, domains=domains) as (server, lookup, _):  # type: ignore[arg-type]
        client = await connect(server)
        asked = sum(world.dns.queries.values())
        assert await client.ask("postfix", "example.org") == "OK encrypt"
        assert await client.ask("tlsrpt", "other.example") == "OK dane-only"
        memo = server.service.reply_now(encode(b"postfix example.org"))
        assert memo == b"10:OK encrypt,"
    assert sum(world.dns.queries.values()) == asked
    assert lookup.lookups == 0


async def test_sm01_unix_socket(world: LabWorld, tmp_path: Path) -> None:
    path = tmp_path / "sm.sock"
    async with serving(world, str(path)) as (server, _, _):
        assert (path.stat().st_mode & 0o777) == 0o666
        client = await connect(server)
        assert await client.ask("postfix", "example.org") == SECURE
    assert not path.exists()


async def test_sm01_idle_connection_is_closed(world: LabWorld) -> None:
    async with serving(world, idle_timeout=0.2) as (server, _, _):
        client = await connect(server)
        assert await client.ask("postfix", "nothing.example") == "NOTFOUND "
        assert await client.closed()


async def test_sm01_connection_cap(world: LabWorld) -> None:
    async with serving(world, max_connections=1) as (server, _, _):
        first = await connect(server)
        assert await first.ask("postfix", "nothing.example") == "NOTFOUND "
        second = await connect(server)
        assert await second.closed()
        assert await first.ask("postfix", "example.org") == SECURE


async def test_sm01_pipelined_requests_in_order_and_bounded(world: LabWorld) -> None:
    world.publish_policy("stall.example", "enforce", ["mx.stall.example"])
    world.policy_host.set_failure("stall.example", Failure.STALL)
    async with serving(world, budget=1.0, fetch_timeout=30) as (server, _, _):
        client = await connect(server)
        keys = ["example.org", "nothing.example", "[mx]:25", "testing.example"] * 1500
        keys.insert(0, "stall.example")  # a slow look-up first: everything behind it waits
        client.writer.write(b"".join(encode(f"postfix {k}".encode()) for k in keys))
        await client.writer.drain()
        # More requests wait than a connection may queue: the server stops reading it.
        await wait_until(lambda: any(c.paused for c in server.connections), 5)
        replies: list[bytes] = []
        async with asyncio.timeout(20):
            while len(replies) < len(keys):
                replies += client.decoder.feed(await client.reader.read(65536))
    expected = {
        "stall.example": "NOTFOUND ",  # the budget ran out, nothing cached (RFC 8461 5)
        "example.org": SECURE,
        "nothing.example": "NOTFOUND ",
        "[mx]:25": "NOTFOUND ",
        "testing.example": "NOTFOUND ",
    }
    assert [r.decode() for r in replies] == [expected[k] for k in keys]
