"""The relay's resolver asks the configured servers and caches answers for their TTL."""

from __future__ import annotations

from lab.dns import LabDns
from relay.config import DnsConfig
from relay.resolver import AnswerCache, make_resolver, query


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


async def test_query_keeps_finished_answers_until_their_expiry(lab_dns: LabDns) -> None:
    lab_dns.ttl = 300
    lab_dns.add("example.org", "MX", "10 mx.example.org.")
    resolver = make_resolver(DnsConfig(nameservers=(lab_dns.address,), timeout=2))
    cache = resolver.cache
    assert isinstance(cache, AnswerCache)
    first = await query(resolver, "example.org", "MX")
    assert first.texts == ("10 mx.example.org.",)
    assert await query(resolver, "example.org", "MX") is first  # no resolution at all
    # At the expiry dnspython's cache gives the answer, the kept one goes too.
    expiry = cache.answers[("example.org", "MX")][0]
    assert cache.answer("example.org", "MX", expiry) is None
    lab_dns.set("example.org", "MX", ["20 mx2.example.org."])
    cache.flush()  # what flushes dnspython's cache flushes ours
    assert (await query(resolver, "example.org", "MX")).texts == ("20 mx2.example.org.",)
    assert lab_dns.count("example.org", "MX") == 2


async def test_query_keeps_a_no_data_answer_for_its_negative_ttl(lab_dns: LabDns) -> None:
    lab_dns.ttl = 300
    lab_dns.add("mx.example.org", "A", "127.0.0.1")
    resolver = make_resolver(DnsConfig(nameservers=(lab_dns.address,), timeout=2))
    for _ in range(3):
        assert (await query(resolver, "mx.example.org", "AAAA")).texts == ()
    assert lab_dns.count("mx.example.org", "AAAA") == 1


async def test_query_keeps_no_ttl_zero_answer(lab_dns: LabDns) -> None:
    lab_dns.add("example.org", "MX", "10 mx.example.org.")
    resolver = make_resolver(DnsConfig(nameservers=(lab_dns.address,), timeout=2))
    await query(resolver, "example.org", "MX")
    await query(resolver, "example.org", "MX")
    assert lab_dns.count("example.org", "MX") == 2
