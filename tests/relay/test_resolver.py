"""The relay's resolver asks the configured servers and caches answers for their TTL."""

from __future__ import annotations

from lab.dns import LabDns
from relay.config import DnsConfig
from relay.resolver import make_resolver


async def test_answers_are_cached_for_their_ttl() -> None:
    server = LabDns(ttl=300)
    server.add("_mta-sts.example.org", "TXT", "v=STSv1; id=1;")
    async with server.running():
        resolver = make_resolver(DnsConfig(nameservers=(server.address,), timeout=2))
        for _ in range(5):
            answer = await resolver.resolve("_mta-sts.example.org", "TXT")
            assert b"".join(answer[0].strings) == b"v=STSv1; id=1;"
    assert server.count("_mta-sts.example.org", "TXT") == 1


async def test_ttl_zero_answers_are_asked_again(lab_dns: LabDns) -> None:
    lab_dns.add("example.org", "MX", "10 mx.example.org.")
    resolver = make_resolver(DnsConfig(nameservers=(lab_dns.address,), timeout=2))
    for _ in range(3):
        await resolver.resolve("example.org", "MX")
    assert lab_dns.count("example.org", "MX") == 3
