"""The lab DNS server answers over UDP and TCP from its zone data, and counts queries."""

from __future__ import annotations

import dns.asyncquery
import dns.asyncresolver
import dns.message
import dns.nameserver
import dns.rcode
import dns.resolver
import pytest

from lab.dns import LabDns


def resolver_for(server: LabDns) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
    return resolver


async def test_answers_txt_mx_and_a_over_udp_and_tcp(lab_dns: LabDns) -> None:
    lab_dns.add("_mta-sts.example.org", "TXT", ("v=STSv1; ", "id=20240101;"))
    lab_dns.add("example.org", "MX", "10 mx.example.org.")
    lab_dns.add("mx.example.org", "A", "127.0.0.10")
    resolver = resolver_for(lab_dns)
    txt = await resolver.resolve("_mta-sts.example.org", "TXT")
    assert [b"".join(r.strings) for r in txt] == [b"v=STSv1; id=20240101;"]
    mx = await resolver.resolve("example.org", "MX")
    assert [(r.preference, r.exchange.to_text()) for r in mx] == [(10, "mx.example.org.")]
    query = dns.message.make_query("mx.example.org", "A")
    reply = await dns.asyncquery.tcp(query, lab_dns.host, port=lab_dns.port, timeout=2)
    assert reply.answer[0][0].address == "127.0.0.10"
    assert lab_dns.count("example.org", "MX") == 1
    assert lab_dns.count("mx.example.org", "A") == 1


async def test_nxdomain_nodata_and_servfail(lab_dns: LabDns) -> None:
    lab_dns.add("example.org", "MX", "10 mx.example.org.")
    resolver = resolver_for(lab_dns)
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("nothing.example.org", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("example.org", "TXT")
    lab_dns.servfail("example.org")
    query = dns.message.make_query("example.org", "MX")
    reply = await dns.asyncquery.udp(query, lab_dns.host, port=lab_dns.port, timeout=2)
    assert reply.rcode() == dns.rcode.SERVFAIL


async def test_records_can_change_while_running(lab_dns: LabDns) -> None:
    lab_dns.add("_mta-sts.example.org", "TXT", "v=STSv1; id=1")
    resolver = resolver_for(lab_dns)
    lab_dns.set("_mta-sts.example.org", "TXT", ["v=STSv1; id=2"])
    answer = await resolver.resolve("_mta-sts.example.org", "TXT")
    assert [b"".join(r.strings) for r in answer] == [b"v=STSv1; id=2"]
    lab_dns.remove("_mta-sts.example.org")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("_mta-sts.example.org", "TXT")


@pytest.mark.parametrize(("ttl", "aaaa_queries"), [(300, 1), (0, 3)])
async def test_signed_no_data_answers_are_cached_for_the_zone_ttl(
    ttl: int, aaaa_queries: int
) -> None:
    """A signed "no AAAA" answer carries an SOA whose negative TTL follows the zone's TTL, so the
    relay's caching resolver asks once when the zone has a real TTL (the benchmarks) and every
    time in the lab (TTL 0, scenarios change records)."""
    from relay.config import DnsConfig
    from relay.delivery.mx import lookup_mx
    from relay.resolver import make_resolver

    lab_dns = LabDns("127.0.0.1", ttl=ttl)
    lab_dns.add("example.org", "MX", "10 mx.example.org.")
    lab_dns.add("mx.example.org", "A", "127.0.0.25")
    async with lab_dns.running(0):
        config = DnsConfig(nameservers=(lab_dns.address,), dnssec="ad")
        resolver = make_resolver(config)
        for _ in range(3):
            mx = await lookup_mx("example.org", resolver)
            assert mx.hosts[0].addresses == ("127.0.0.25",)
    assert lab_dns.count("mx.example.org", "AAAA") == aaaa_queries
