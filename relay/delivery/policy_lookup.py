"""The look-ups a destination policy needs (`relay.delivery.policy`): the thin I/O beside it.

view = await lookup_destination(domain, config, resolver=r, sts=service.get, history=store.get)
facts = await lookup_host(dest, host, resolver=r, history=store.get)  # one MX host
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import dns.asyncresolver

from detect.history import HostHistory
from mtasts.model import PolicyResult
from relay.config import Config
from relay.delivery.dane_lookup import lookup_tlsa
from relay.delivery.mx import MxHost, MxResult, MxStatus, lookup_mx
from relay.delivery.policy import (
    Destination,
    DestinationView,
    HostFacts,
    destination,
    needs_sts,
    plan_host,
)

StsLookup = Callable[[str], Awaitable[PolicyResult]]
HistoryLookup = Callable[[str], HostHistory | None]


async def lookup_host(
    dest: Destination,
    host: MxHost,
    *,
    resolver: dns.asyncresolver.Resolver,
    history: HistoryLookup | None = None,
) -> HostFacts:
    """The TLSA records (when they matter) and the remembered TLS of one MX host."""
    tlsa = await lookup_tlsa(resolver, host) if dest.wants_tlsa(host) else None
    # The history store may be SQLite or a shared one: never block the event loop on it.
    remembered = await asyncio.to_thread(history, host.name) if history is not None else None
    return HostFacts(host.name, tlsa, remembered)


async def lookup_destination(
    domain: str,
    config: Config,
    *,
    resolver: dns.asyncresolver.Resolver,
    sts: StsLookup,
    history: HistoryLookup | None = None,
    now: float,
    mx: MxResult | None = None,
    requiretls: bool = False,
) -> DestinationView:
    """Look up everything `domain`'s rules depend on and plan every MX host.

    `sts` gives the MTA-STS result (the relay's `PolicyService.get`, or a live fetch); `mx`, when
    given, is used instead of a look-up. A failed MX look-up leaves `plans` empty (see `mx`).
    `requiretls`: plan for a REQUIRETLS message (RFC 8689), as delivery does for one.
    """
    if mx is None:
        mx = await lookup_mx(domain, resolver)
    literal = mx.literal or domain.startswith("[")
    wanted = needs_sts(config.domain_tls(domain), literal=literal, requiretls=requiretls)
    result = await sts(domain) if wanted else None
    dest = destination(domain, config, sts=result, mx=mx, requiretls=requiretls)
    if mx.status is not MxStatus.OK:
        return DestinationView(dest, mx)
    facts = await asyncio.gather(
        *(lookup_host(dest, h, resolver=resolver, history=history) for h in mx.hosts)
    )
    last = len(mx.hosts) - 1
    plans = tuple(plan_host(dest, f, last_mx=i == last, now=now) for i, f in enumerate(facts))
    return DestinationView(dest, mx, plans)
