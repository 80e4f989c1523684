"""MX look-up through the lab DNS server (RFC 5321 5.1, RFC 7505)."""

from __future__ import annotations

import random

import dns.asyncresolver
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.dns import LabDns
from relay.delivery.mx import MxStatus, address_literal, lookup_mx


async def test_mx_records_sorted_with_addresses(
    lab_dns: LabDns, lab_resolver: dns.asyncresolver.Resolver
) -> None:
    lab_dns.add("example.org", "MX", "20 backup.example.org.")
    lab_dns.add("example.org", "MX", "10 mx1.example.org.")
    lab_dns.add("mx1.example.org", "A", "127.0.0.11")
    lab_dns.add("backup.example.org", "A", "127.0.0.12")
    lab_dns.add("backup.example.org", "AAAA", "::1")
    result = await lookup_mx("example.org", lab_resolver, rng=random.Random(0))
    assert result.status is MxStatus.OK
    assert [(h.name, h.preference) for h in result.hosts] == [
        ("mx1.example.org", 10),
        ("backup.example.org", 20),
    ]
    assert result.hosts[0].addresses == ("127.0.0.11",)
    assert result.hosts[1].addresses == ("127.0.0.12", "::1")
    assert not result.permanent


async def test_no_mx_uses_the_domain_itself(
    lab_dns: LabDns, lab_resolver: dns.asyncresolver.Resolver
) -> None:
    lab_dns.add("implicit.example", "A", "127.0.0.13")
    result = await lookup_mx("implicit.example", lab_resolver)
    assert result.status is MxStatus.OK
    assert result.implicit
    assert [(h.name, h.addresses) for h in result.hosts] == [("implicit.example", ("127.0.0.13",))]


async def test_null_mx_is_permanent(
    lab_dns: LabDns, lab_resolver: dns.asyncresolver.Resolver
) -> None:
    lab_dns.add("nomail.example", "MX", "0 .")
    lab_dns.add("nomail.example", "A", "127.0.0.14")
    result = await lookup_mx("nomail.example", lab_resolver)
    assert result.status is MxStatus.NULL_MX
    assert result.permanent
    assert "null MX" in result.reason


async def test_nxdomain_is_permanent(lab_resolver: dns.asyncresolver.Resolver) -> None:
    result = await lookup_mx("missing.example", lab_resolver)
    assert result.status is MxStatus.NO_DOMAIN
    assert result.permanent


async def test_no_mx_and_no_address_is_permanent(
    lab_dns: LabDns, lab_resolver: dns.asyncresolver.Resolver
) -> None:
    lab_dns.add("txtonly.example", "TXT", "hello")
    result = await lookup_mx("txtonly.example", lab_resolver)
    assert result.status is MxStatus.NO_DOMAIN


async def test_servfail_is_temporary(
    lab_dns: LabDns, lab_resolver: dns.asyncresolver.Resolver
) -> None:
    lab_dns.add("broken.example", "MX", "10 mx.broken.example.")
    lab_dns.servfail("broken.example")
    result = await lookup_mx("broken.example", lab_resolver)
    assert result.status is MxStatus.TEMPFAIL
    assert not result.permanent


async def test_mx_host_without_address_is_kept_empty(
    lab_dns: LabDns, lab_resolver: dns.asyncresolver.Resolver
) -> None:
    lab_dns.add("half.example", "MX", "10 gone.half.example.")
    lab_dns.add("half.example", "MX", "20 mx.half.example.")
    lab_dns.add("mx.half.example", "A", "127.0.0.15")
    result = await lookup_mx("half.example", lab_resolver)
    assert [(h.name, h.addresses) for h in result.hosts] == [
        ("gone.half.example", ()),
        ("mx.half.example", ("127.0.0.15",)),
    ]


async def test_sts08_address_literal_is_its_own_mx(
    lab_resolver: dns.asyncresolver.Resolver, lab_dns: LabDns
) -> None:
    result = await lookup_mx("[127.0.0.1]", lab_resolver)
    assert result.literal
    assert result.hosts[0].addresses == ("127.0.0.1",)
    assert sum(lab_dns.queries.values()) == 0  # nothing looked up
    v6 = await lookup_mx("[IPv6:::1]", lab_resolver)
    assert v6.hosts[0].addresses == ("::1",)


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_address_literal_never_raises(text: str) -> None:
    value = address_literal(text)
    assert value is None or (text.startswith("[") and text.endswith("]"))
    assert address_literal(f"[{text}]") is None or text
