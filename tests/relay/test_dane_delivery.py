"""DANE delivery end to end: signed lab zones, a real unbound validating them, real TLS MX hosts."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from detect.dane import DaneStatus
from detect.history import MemoryTlsHistoryStore
from lab.mx import LabMx
from lab.pki import IssuedCert
from lab.world import LabWorld
from mtasts.model import Mode, Policy, PolicyResult, PolicySource
from relay.config import (
    Config,
    DeliveryConfig,
    DetectConfig,
    DnsConfig,
    DomainConfig,
    RelayConfig,
)
from relay.delivery.dane_tls import dane_context, presented_chain
from relay.delivery.deliverer import Deliverer, DeliveryRequest, RcptStatus
from relay.diagnostics.probe import ProbeReport, probe_domain
from relay.resolver import make_resolver
from relay.tls import client_context
from tests.relay.test_delivery import StubPolicies
from tests.unbound_world import need_unbound
from tlsrpt_emit.model import MemorySink, PolicyType

DOMAIN = "dane.test"
MX = "mx.dane.test"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    need_unbound()
    async with LabWorld(tmp_path / "world", validating=True).running() as started:
        started.publish_mx(DOMAIN, [(10, MX)])
        yield started


async def _mx(world: LabWorld, issued: IssuedCert, ip: str = "127.0.2.10") -> LabMx:
    return await world.serve_mx(LabMx(ip, hostname=MX, tls_context=issued.server_context()))


async def _deliver(
    world: LabWorld, policy: PolicyResult | None = None, **domains: str
) -> tuple[Any, MemorySink]:
    assert world.unbound is not None
    config = Config(
        relay=RelayConfig(hostname="relay.test"),
        delivery=DeliveryConfig(port=world.mx_port, connect_timeout=3, command_timeout=5),
        dns=DnsConfig(nameservers=(world.unbound.address,), timeout=5),
        detect=DetectConfig(on_downgrade="defer"),
        domains={d: DomainConfig(tls=t) for d, t in domains.items()},
    )
    sink = MemorySink()
    deliverer = Deliverer(
        config,
        resolver=make_resolver(config.dns),
        policy_service=StubPolicies(policy),
        history_store=MemoryTlsHistoryStore(),
        sink=sink,
        ssl_context=client_context(str(world.ca.ca_file)),
    )
    request = DeliveryRequest(
        "q1", "alice@sender.test", (f"bob@{DOMAIN}",), b"Subject: x\r\n\r\nhi\r\n"
    )
    try:
        outcome = await deliverer.deliver(request)
    finally:
        await deliverer.close()
    return outcome, sink


async def _probe(world: LabWorld) -> ProbeReport:
    assert world.unbound is not None
    config = Config(
        delivery=DeliveryConfig(port=world.mx_port, connect_timeout=3, command_timeout=5),
        dns=DnsConfig(nameservers=(world.unbound.address,), timeout=5),
    )
    ssl_context = client_context(str(world.ca.ca_file))
    return await probe_domain(
        DOMAIN, config, resolver=make_resolver(config.dns), ssl_context=ssl_context
    )


def _testing_policy() -> PolicyResult:
    text = f"version: STSv1\nmode: testing\nmx: {MX}\nmax_age: 86400"
    return PolicyResult(DOMAIN, Policy(Mode.TESTING, 86400, (MX,), text), PolicySource.FRESH)


@pytest.mark.parametrize(("selector", "mtype"), [(0, 1), (1, 1), (1, 2), (0, 0), (1, 0)])
async def test_dane_ee_delivered_over_tls(world: LabWorld, selector: int, mtype: int) -> None:
    # A certificate from a CA the relay does not trust: only DANE can accept it.
    issued = world.ca.untrusted().issue(MX)
    mx = await _mx(world, issued)
    record = issued.tlsa(3, selector, mtype)
    world.publish_tlsa(MX, [record])
    outcome, sink = await _deliver(world)
    assert [r.status for r in outcome.rcpts] == [RcptStatus.DELIVERED]
    assert mx.messages[0].tls
    result = sink.results[-1]
    assert result.policy_type is PolicyType.TLSA
    assert result.policy_strings == (record.upper(),)
    assert result.result_type is None


async def test_dane_ta_delivered_with_name_check(world: LabWorld) -> None:
    ca = world.ca.untrusted()  # not the relay's [tls].ca_file: only DANE vouches for it
    issued = ca.issue(MX, with_ca=True)
    mx = await _mx(world, issued)
    world.publish_tlsa(MX, [ca.tlsa(2, 0, 1)])
    outcome, _ = await _deliver(world)
    assert outcome.delivered
    assert mx.messages[0].tls


async def test_dane_ta_wrong_name_deferred(world: LabWorld) -> None:
    ca = world.ca.untrusted()
    issued = ca.issue("mx.elsewhere.test", with_ca=True)
    mx = await _mx(world, issued)
    world.publish_tlsa(MX, [ca.tlsa(2, 1, 1)])
    outcome, sink = await _deliver(world)
    assert outcome.deferred[0].result_type == "tlsa-invalid"
    assert not mx.messages
    assert sink.results[-1].failure_reason_code == "dane-name-mismatch"


async def test_dane_attacker_certificate_deferred(world: LabWorld) -> None:
    real = world.ca.issue(MX)
    attacker = world.ca.issue(MX)  # even a PKIX-valid certificate from a trusted CA
    mx = await _mx(world, attacker)
    world.publish_tlsa(MX, [real.tlsa(3, 1, 1)])
    outcome, sink = await _deliver(world)
    assert outcome.deferred[0].result_type == "tlsa-invalid"
    assert not mx.messages
    assert sink.results[-1].policy_type is PolicyType.TLSA


async def test_dane_bogus_tlsa_deferred_without_connecting(world: LabWorld) -> None:
    issued = world.ca.issue(MX)
    mx = await _mx(world, issued)
    world.publish_tlsa(MX, [issued.tlsa()])
    world.dns.break_dnssec(f"_25._tcp.{MX}", "TLSA")
    outcome, sink = await _deliver(world)
    assert outcome.deferred[0].result_type == "dnssec-invalid"
    assert mx.connections == 0
    assert sink.results[-1].result_type == "dnssec-invalid"


async def test_dane_only_without_tlsa_deferred(world: LabWorld) -> None:
    mx = await _mx(world, world.ca.issue(MX))
    outcome, sink = await _deliver(world, **{DOMAIN: "dane-only"})
    assert outcome.deferred[0].result_type == "dane-required"
    assert mx.connections == 0
    assert sink.results[-1].result_type == "dane-required"
    # Without the override the same domain gets mail (opportunistic TLS).
    outcome, _ = await _deliver(world)
    assert outcome.delivered


async def test_sts14_dane_wins_over_a_testing_policy(world: LabWorld) -> None:
    # MTA-STS testing would deliver despite a bad certificate; the failed DANE check stops it.
    real = world.ca.issue(MX)
    mx = await _mx(world, world.ca.issue(MX))
    world.publish_tlsa(MX, [real.tlsa(3, 1, 1)])
    outcome, _ = await _deliver(world, _testing_policy())
    assert outcome.deferred[0].result_type == "tlsa-invalid"
    assert not mx.messages


async def test_dane_unusable_records_still_encrypt(world: LabWorld) -> None:
    issued = world.ca.untrusted().issue(MX)
    mx = await _mx(world, issued)
    world.publish_tlsa(MX, [issued.tlsa(1, 1, 1)])  # PKIX-EE: unusable for SMTP
    outcome, _ = await _deliver(world)
    assert outcome.delivered
    assert mx.messages[0].tls


async def test_dane_presented_chain_api_exists(world: LabWorld) -> None:
    # DANE-TA needs the intermediates the server sent; CPython exposes them only through
    # SSLObject._sslobj.get_unverified_chain(). If this fails, relay/delivery/dane_tls.py must
    # find another way before DANE-TA can work.
    issued = world.ca.issue(MX, with_ca=True)
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.2.20", 0, ssl=issued.server_context()
    )
    port = server.sockets[0].getsockname()[1]
    try:
        _reader, writer = await asyncio.open_connection(
            "127.0.2.20", port, ssl=dane_context(), server_hostname=MX
        )
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        assert hasattr(ssl_object._sslobj, "get_unverified_chain")  # type: ignore[attr-defined]
        chain = presented_chain(ssl_object)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert len(chain) == 2
    assert chain[0] == ssl_object.getpeercert(binary_form=True)


async def test_dane_sni_is_the_tlsa_base_domain(world: LabWorld) -> None:
    # RFC 7672 2.2.3 and 8.1: the MX name is a secure CNAME for a hosting name whose TLSA
    # records apply; SNI names that base domain, so a shared host can pick the right certificate.
    hosting = "mail.hosting.test"
    issued = world.ca.untrusted().issue(hosting)
    context = issued.server_context()
    sent: list[str | None] = []
    context.sni_callback = lambda _obj, name, _ctx: sent.append(name)  # type: ignore[assignment,return-value]
    await world.serve_mx(LabMx("127.0.2.30", hostname=hosting, tls_context=context))
    world.dns.set(MX, "CNAME", [f"{hosting}."])
    world.publish_tlsa(hosting, [issued.tlsa(3, 1, 1)])
    outcome, sink = await _deliver(world)
    assert outcome.delivered
    assert sent == [hosting]
    assert sink.results[-1].policy_type is PolicyType.TLSA
    # `stsguard probe` takes SNI from the same plan: the base domain, on each of its connections
    # (verified, then unverified to read the certificate only DANE vouches for).
    sent.clear()
    report = await _probe(world)
    assert report.mx[0].dane_status is DaneStatus.VALID
    assert sent == [hosting, hosting]
