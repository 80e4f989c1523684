"""SM-02: DANE before MTA-STS in the socketmap's answers, through a real validating resolver
(unbound in front of the lab's signed zones)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab.mx import LabMx
from lab.world import LabWorld
from mtasts.cache import MemoryPolicyStore
from mtasts.service import PolicyService
from relay.config import Config, DnsConfig
from relay.resolver import make_resolver
from relay.socketmap.answer import answer
from relay.socketmap.lookup import MapLookup
from relay.tls import client_context
from tests.unbound_world import need_unbound

DOMAIN = "dane.test"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    need_unbound()
    async with LabWorld(tmp_path / "world", validating=True).running() as started:
        started.publish_policy(DOMAIN, "enforce", ["*.dane.test"])
        yield started


async def serve(world: LabWorld, name: str, ip: str) -> str:
    """An MX host; its TLSA record (DANE-EE, SPKI, SHA-256)."""
    issued = world.ca.untrusted().issue(name)
    await world.serve_mx(LabMx(ip, hostname=name, tls_context=issued.server_context()))
    return issued.tlsa(3, 1, 1)


async def reply(world: LabWorld) -> str:
    resolver = make_resolver(DnsConfig(nameservers=(world.nameserver,), timeout=2))
    policies = PolicyService(
        MemoryPolicyStore(),
        resolver,
        client_context(str(world.ca.ca_file)),
        https_port=world.policy_host.port,
        fetch_timeout=5,
    )
    config = Config()
    lookup = MapLookup(policies, resolver, lambda: config)
    try:
        return answer(await lookup.facts(DOMAIN)).reply
    finally:
        await lookup.close()


async def test_sm02_usable_tlsa_on_every_mx_is_dane_only(world: LabWorld) -> None:
    world.publish_mx(DOMAIN, [(10, "mx1.dane.test")])
    world.publish_tlsa("mx1.dane.test", [await serve(world, "mx1.dane.test", "127.0.4.11")])
    assert await reply(world) == "OK dane-only"  # DANE before the enforce policy (RFC 8461 2)


async def test_sm02_tlsa_on_some_mx_is_dane(world: LabWorld) -> None:
    world.publish_mx(DOMAIN, [(10, "mx1.dane.test"), (20, "mx2.dane.test")])
    world.publish_tlsa("mx1.dane.test", [await serve(world, "mx1.dane.test", "127.0.4.11")])
    await serve(world, "mx2.dane.test", "127.0.4.12")
    assert await reply(world) == "OK dane"


async def test_sm02_bogus_tlsa_is_temp_not_mta_sts(world: LabWorld) -> None:
    world.publish_mx(DOMAIN, [(10, "mx1.dane.test")])
    world.publish_tlsa("mx1.dane.test", [await serve(world, "mx1.dane.test", "127.0.4.11")])
    world.dns.break_dnssec("_25._tcp.mx1.dane.test", "TLSA")
    assert (await reply(world)).startswith("TEMP DANE look-up failed")


async def test_sm02_no_tlsa_leaves_mta_sts(world: LabWorld) -> None:
    world.publish_mx(DOMAIN, [(10, "mx1.dane.test")])
    await serve(world, "mx1.dane.test", "127.0.4.11")
    assert await reply(world) == "OK secure match=.dane.test servername=hostname"
