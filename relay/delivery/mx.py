"""MX look-up for a recipient domain through the configured resolver (RFC 5321 5.1, RFC 7505)."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from itertools import groupby
from typing import TypeVar

import dns.asyncresolver
import structlog

from relay.resolver import DnsAnswer, DnsTempFail
from relay.resolver import query as dns_query

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

# Orders MX hosts of equal preference (RFC 5321 5.1); one for all callers that bring none: a
# fresh random.Random() seeds itself from the OS, 12 us a call.
_RNG = random.Random()


def order_by_preference(records: Iterable[tuple[int, _T]], rng: random.Random) -> list[_T]:
    """Items sorted by MX preference, lowest first; equal preferences in random order
    (RFC 5321 section 5.1)."""
    ordered: list[_T] = []
    for _pref, group in groupby(sorted(records, key=lambda r: r[0]), key=lambda r: r[0]):
        same = [item for _, item in group]
        rng.shuffle(same)
        ordered.extend(same)
    return ordered


class MxStatus(StrEnum):
    OK = "ok"
    NULL_MX = "null-mx"  # RFC 7505: the domain accepts no mail (permanent)
    NO_DOMAIN = "no-domain"  # NXDOMAIN, or no MX and no address (permanent)
    TEMPFAIL = "tempfail"  # SERVFAIL, timeout: try again later


@dataclass(frozen=True, slots=True)
class MxHost:
    """One MX host in delivery order; `addresses` are its A then AAAA addresses, `secure` when
    they were DNSSEC-validated, `canonical_name` the name they were found at after CNAMEs."""

    name: str
    preference: int
    addresses: tuple[str, ...]
    secure: bool = False
    canonical_name: str = ""


@dataclass(frozen=True, slots=True)
class MxResult:
    """Where mail for `domain` goes. `literal` is an address-literal domain (no policy: STS-08)."""

    domain: str
    status: MxStatus
    hosts: tuple[MxHost, ...] = ()
    reason: str = ""
    implicit: bool = False
    literal: bool = False
    secure: bool = False  # the MX RRset was DNSSEC-validated (RFC 7672 2.2.1)

    @property
    def permanent(self) -> bool:
        return self.status in (MxStatus.NULL_MX, MxStatus.NO_DOMAIN)


def address_literal(domain: str) -> str | None:
    """The IP address of an address-literal domain (``[127.0.0.1]``, ``[IPv6:::1]``), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


async def resolve_host(host: str, preference: int, resolver: dns.asyncresolver.Resolver) -> MxHost:
    """`host` with its A then AAAA addresses (empty when it has none or the look-up failed) and
    whether they were DNSSEC-signed (RFC 7672 2.2.2: only then is TLSA looked up)."""
    addresses: list[str] = []
    answered: list[DnsAnswer] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await dns_query(resolver, host, rdtype)
        except DnsTempFail as exc:  # SERVFAIL (bogus, under a validating resolver) or timeout
            log.info("mx.address_lookup_failed", host=host, error=str(exc))
            continue
        answered.append(answer)
        if answer.texts is None:  # NXDOMAIN
            break
        addresses.extend(answer.texts)
    secure = bool(answered) and all(a.secure for a in answered)
    canonical = next((a.canonical_name for a in answered if a.texts), host)
    return MxHost(host, preference, tuple(addresses), secure, canonical)


async def resolve_addresses(host: str, resolver: dns.asyncresolver.Resolver) -> tuple[str, ...]:
    """A then AAAA addresses of `host`; empty when it has none or the look-up failed."""
    return (await resolve_host(host, 0, resolver)).addresses


async def lookup_mx(
    domain: str,
    resolver: dns.asyncresolver.Resolver,
    *,
    rng: random.Random | None = None,
    addresses_if_insecure: bool = True,
) -> MxResult:
    """The MX hosts of `domain` in delivery order, each with its addresses.

    `addresses_if_insecure=False`: under an MX RRset that is not DNSSEC-signed the hosts come
    without addresses (for a caller to whom DANE needs a signed MX RRset, the socketmap: the
    address look-ups would change nothing)."""
    literal = address_literal(domain)
    if literal is not None:
        return MxResult(domain, MxStatus.OK, (MxHost(literal, 0, (literal,)),), literal=True)
    name = domain.rstrip(".").lower()
    try:
        mx_answer = await dns_query(resolver, name, "MX")
        if mx_answer.texts is None:
            return MxResult(domain, MxStatus.NO_DOMAIN, reason=f"{name}: no such domain")
        records: list[tuple[int, str]] = []
        for text in mx_answer.texts:
            pref, _, exchange = text.partition(" ")
            records.append((int(pref), exchange.rstrip(".").lower()))
        if records and all(host == "" for _, host in records):
            return MxResult(
                domain, MxStatus.NULL_MX, reason=f"{name} does not accept mail (null MX)"
            )
        records = [r for r in records if r[1]]
        if not records:
            # RFC 5321 5.1: no MX, the domain itself is the implicit MX.
            implicit = await resolve_host(name, 0, resolver)
            if not implicit.addresses:
                return MxResult(domain, MxStatus.NO_DOMAIN, reason=f"{name}: no MX and no address")
            return MxResult(
                domain, MxStatus.OK, (implicit,), implicit=True, secure=mx_answer.secure
            )
    except DnsTempFail as exc:
        return MxResult(domain, MxStatus.TEMPFAIL, reason=str(exc))
    ordered = order_by_preference(((pref, (pref, host)) for pref, host in records), rng or _RNG)
    if not (mx_answer.secure or addresses_if_insecure):
        hosts = [MxHost(host, pref, ()) for pref, host in ordered]
    else:
        hosts = [await resolve_host(host, pref, resolver) for pref, host in ordered]
    return MxResult(domain, MxStatus.OK, tuple(hosts), secure=mx_answer.secure)
