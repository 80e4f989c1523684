"""TLSA look-ups through a real validating unbound on loopback (RFC 7672 2.2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncresolver
import dns.name
import dns.rdataclass
import dns.rdatatype
import pytest
import structlog.testing

from lab.dns import LabDns
from lab.unbound import LabUnbound
from relay.config import DnsConfig
from relay.delivery.dane_lookup import TlsaStatus, candidate_bases, lookup_tlsa
from relay.delivery.mx import MxHost, MxStatus, lookup_mx
from relay.resolver import DnsTempFail, Security, dane_warning, make_resolver, query
from tests.unbound_world import validating

TLSA = "3 1 1 " + "ab" * 32


@pytest.fixture
async def unbound(lab_dns: LabDns, tmp_path: Path) -> AsyncIterator[LabUnbound]:
    lab_dns.add("dane.test", "MX", "10 mx.dane.test.")
    lab_dns.add("mx.dane.test", "A", "127.0.0.10")
    lab_dns.add("_25._tcp.mx.dane.test", "TLSA", TLSA)
    async with validating(lab_dns, tmp_path / "unbound", insecure=["unsigned.test"]) as server:
        yield server


@pytest.fixture
def resolver(unbound: LabUnbound) -> dns.asyncresolver.Resolver:
    return make_resolver(DnsConfig(nameservers=(unbound.address,), timeout=5))


async def test_dane_secure_mx_address_and_tlsa(resolver: dns.asyncresolver.Resolver) -> None:
    mx = await lookup_mx("dane.test", resolver)
    assert mx.status is MxStatus.OK
    assert mx.secure
    host = mx.hosts[0]
    assert host.secure
    found = await lookup_tlsa(resolver, host)
    assert found.status is TlsaStatus.SECURE
    assert found.policy_strings == (TLSA.upper(),)
    assert found.base_domain == "mx.dane.test"


async def test_dane_no_tlsa_is_secure_denial(
    lab_dns: LabDns, resolver: dns.asyncresolver.Resolver
) -> None:
    lab_dns.add("mx2.dane.test", "A", "127.0.0.11")
    host = (await lookup_mx("dane.test", resolver)).hosts[0]
    other = MxHost("mx2.dane.test", 10, ("127.0.0.11",), True, "mx2.dane.test")
    assert (await lookup_tlsa(resolver, host)).status is TlsaStatus.SECURE
    found = await lookup_tlsa(resolver, other)
    assert found.status is TlsaStatus.NONE
    answer = await query(resolver, "_25._tcp.mx2.dane.test", "TLSA")
    assert answer.texts is None  # NXDOMAIN, and proven so
    assert answer.security is Security.SECURE


async def test_dane_bogus_tlsa_is_a_temporary_failure(
    lab_dns: LabDns, resolver: dns.asyncresolver.Resolver
) -> None:
    lab_dns.break_dnssec("_25._tcp.mx.dane.test", "TLSA")
    host = (await lookup_mx("dane.test", resolver)).hosts[0]
    found = await lookup_tlsa(resolver, host)
    assert found.status is TlsaStatus.BOGUS
    assert "DNSSEC validation failed" in found.reason
    with pytest.raises(DnsTempFail) as info:
        await query(resolver, "_25._tcp.mx.dane.test", "TLSA")
    assert info.value.bogus


async def test_dane_servfail_is_never_no_records(
    lab_dns: LabDns, resolver: dns.asyncresolver.Resolver
) -> None:
    lab_dns.servfail("_25._tcp.mx.dane.test")
    host = (await lookup_mx("dane.test", resolver)).hosts[0]
    assert (await lookup_tlsa(resolver, host)).status is TlsaStatus.BOGUS


async def test_dane_bogus_mx_defers(lab_dns: LabDns, resolver: dns.asyncresolver.Resolver) -> None:
    lab_dns.break_dnssec("dane.test", "MX")
    mx = await lookup_mx("dane.test", resolver)
    assert mx.status is MxStatus.TEMPFAIL


async def test_dane_insecure_zone_has_no_dane(
    lab_dns: LabDns, resolver: dns.asyncresolver.Resolver
) -> None:
    lab_dns.add("unsigned.test", "MX", "10 mx.unsigned.test.")
    lab_dns.add("mx.unsigned.test", "A", "127.0.0.12")
    lab_dns.add("_25._tcp.mx.unsigned.test", "TLSA", TLSA)
    mx = await lookup_mx("unsigned.test", resolver)
    assert not mx.secure
    assert not mx.hosts[0].secure
    found = await lookup_tlsa(resolver, mx.hosts[0])
    assert found.status is TlsaStatus.NONE  # RFC 7672 2.2.2: insecure addresses, no TLSA


async def test_dane_cname_expanded_name_first_then_mx_name(
    lab_dns: LabDns, resolver: dns.asyncresolver.Resolver
) -> None:
    # RFC 7672 2.2.3: mx.alias.test is a CNAME for real.hosting.test.
    lab_dns.add("alias.test", "MX", "10 mx.alias.test.")
    lab_dns.add("mx.alias.test", "CNAME", "real.hosting.test.")
    lab_dns.add("real.hosting.test", "A", "127.0.0.13")
    lab_dns.add("_25._tcp.mx.alias.test", "TLSA", "3 1 1 " + "cd" * 32)
    host = (await lookup_mx("alias.test", resolver)).hosts[0]
    assert host.canonical_name == "real.hosting.test"
    assert candidate_bases(host) == ("real.hosting.test", "mx.alias.test")
    found = await lookup_tlsa(resolver, host)
    assert found.status is TlsaStatus.SECURE
    assert found.base_domain == "mx.alias.test"  # nothing at the expanded name: the MX name
    lab_dns.add("_25._tcp.real.hosting.test", "TLSA", TLSA)
    resolver.cache.flush()  # type: ignore[union-attr]
    found = await lookup_tlsa(resolver, host)
    assert found.base_domain == "real.hosting.test"
    assert set(found.names) == {"mx.alias.test", "real.hosting.test"}


def test_dane_cname_rules_table() -> None:
    plain = MxHost("mx.a.test", 10, ("127.0.0.1",), True, "mx.a.test")
    secure_cname = MxHost("mx.a.test", 10, ("127.0.0.1",), True, "b.test")
    insecure_cname = MxHost("mx.a.test", 10, ("127.0.0.1",), False, "b.test")
    assert candidate_bases(plain) == ("mx.a.test",)
    assert candidate_bases(secure_cname) == ("b.test", "mx.a.test")
    assert candidate_bases(insecure_cname) == ("mx.a.test",)


async def test_dane_tlsa_answers_cached_by_ttl(
    lab_dns: LabDns, unbound: LabUnbound, tmp_path: Path
) -> None:
    lab_dns.ttl = 3600
    async with validating(lab_dns, tmp_path / "long", max_ttl=3600) as caching:
        resolver = make_resolver(DnsConfig(nameservers=(caching.address,), timeout=5))
        host = (await lookup_mx("dane.test", resolver)).hosts[0]
        first = await lookup_tlsa(resolver, host)
        asked = lab_dns.count("_25._tcp.mx.dane.test", "TLSA")
        key = (dns.name.from_text("_25._tcp.mx.dane.test"), dns.rdatatype.TLSA, dns.rdataclass.IN)
        cached = resolver.cache.get(key)  # type: ignore[union-attr]
        assert cached is not None
        assert cached.rrset is not None
        assert cached.rrset.ttl > 0
        again = await lookup_tlsa(resolver, host)
        assert again == first
        assert lab_dns.count("_25._tcp.mx.dane.test", "TLSA") == asked


async def test_dane_off_without_trusted_ad(unbound: LabUnbound) -> None:
    resolver = make_resolver(DnsConfig(nameservers=(unbound.address,), dnssec="off"))
    mx = await lookup_mx("dane.test", resolver)
    assert not mx.secure
    assert (await lookup_tlsa(resolver, mx.hosts[0])).status is TlsaStatus.OFF


@pytest.mark.parametrize(
    ("nameservers", "dnssec", "mode"),
    [
        (("127.0.0.1:53",), "auto", "ad"),
        (("127.0.0.1", "[::1]:5353"), "auto", "ad"),
        (("127.0.0.1", "192.0.2.1"), "auto", "off"),
        ((), "auto", "off"),
        (("192.0.2.1",), "ad", "ad"),
        (("127.0.0.1",), "off", "off"),
    ],
)
def test_dane_dnssec_mode(nameservers: tuple[str, ...], dnssec: str, mode: str) -> None:
    config = DnsConfig(nameservers=nameservers, dnssec=dnssec)
    assert config.dnssec_mode == mode
    assert (dane_warning(config) is None) is (mode == "ad")


@pytest.mark.parametrize(("dnssec", "warned"), [("off", True), ("auto", False)])
async def test_dane_relay_warns_at_start_when_dane_cannot_work(
    lab_dns: LabDns, tmp_path: Path, dnssec: str, warned: bool
) -> None:
    from lab.world import free_port
    from relay.app import Relay
    from relay.config import config_from_dict

    config = config_from_dict(
        {
            "relay": {"listen": f"127.0.0.1:{free_port()}", "state_dir": str(tmp_path / "state")},
            "dns": {"nameservers": [lab_dns.address], "dnssec": dnssec},
            "tlsrpt": {"enabled": False},
        }
    )
    with structlog.testing.capture_logs() as logs:
        async with Relay(config).running():
            pass
    lines = [e for e in logs if e["event"] == "relay.dane_unavailable"]
    assert bool(lines) is warned
    if warned:
        assert "DANE" in lines[0]["reason"]
