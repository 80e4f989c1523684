"""The facts behind a socketmap answer, from memory whenever possible.

`MapLookup.facts(domain)` answers from a memory front: a domain looked up less than
`fresh_for` seconds ago costs nothing (no DNS, no state-store query). An older entry is answered
at once while one refresh runs behind it. A domain not in memory is looked up once, however many
Postfix processes ask at the same time (single flight, here and in `PolicyService`); a look-up
slower than `budget` is answered from the policy cache (the one store read of the slow path),
else as a domain without a policy (RFC 8461 section 5), and finishes for the next query.
Postfix gives a socketmap query 100 s and closes a map connection idle for 10 s: the budget
keeps every answer well inside both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import dns.asyncresolver
import structlog

from mtasts.model import PolicyResult, PolicySource
from mtasts.service import PolicyService
from mtasts.state import fallback
from relay.config import Config
from relay.delivery.mx import MxResult, MxStatus, lookup_mx
from relay.delivery.policy import DestinationView, needs_sts
from relay.delivery.policy_lookup import lookup_destination
from relay.resolver import DnssecResolver
from relay.socketmap.answer import ANSWERED_BY_OVERRIDE, DaneState, MapFacts
from relay.tls_rules import DANE_OVERRIDES

log = structlog.get_logger(__name__)

LOOKUP_BUDGET = 5.0  # seconds a query may wait for a cold look-up
FRESH_FOR = 60.0  # seconds an answer is used without looking again
MAX_DOMAINS = 100_000  # domains kept in memory; the oldest are forgotten first


def map_facts(view: DestinationView, *, dnssec: bool) -> MapFacts:
    """What the answer needs from the destination policy of a domain (`relay.delivery.policy`).

    DANE counts only with a DNSSEC-signed MX RRset (otherwise Postfix's `dane` level would
    fall back to opportunistic TLS where MTA-STS may ask for more); a failed MX look-up under a
    trusted validating resolver leaves the DANE state unknown.
    """
    dest = view.destination
    dane, reason = DaneState.OFF, "DNSSEC not trusted ([dns].dnssec = off)"
    if dnssec and dest.domain_tls in DANE_OVERRIDES:
        dane, reason = _dane_state(view)
    return MapFacts(dest.domain, dest.sts, dane, reason, str(dest.domain_tls))


def _dane_state(view: DestinationView) -> tuple[DaneState, str]:
    if view.mx.status is MxStatus.TEMPFAIL:
        return DaneState.TEMPFAIL, f"MX look-up: {view.mx.reason}"
    if view.dane_tempfail:
        bogus = [p for p in view.plans if p.dane_tempfail]
        return DaneState.TEMPFAIL, "; ".join(p.tlsa.reason for p in bogus if p.tlsa)
    if not view.mx.secure:
        return DaneState.NONE, "MX RRset not DNSSEC-signed"
    if view.dane_on_every_mx:
        return DaneState.ALL, f"usable TLSA on all {len(view.plans)} MX hosts"
    signed = sum(1 for p in view.plans if p.policy.is_dane)
    if signed:
        return DaneState.SOME, f"signed TLSA on {signed} of {len(view.plans)} MX hosts"
    return DaneState.NONE, "no MX host has signed TLSA records"


class MapLookup:
    """Facts per domain from the destination policy (`relay.delivery.policy`): MTA-STS through
    `policies`, DANE through `resolver`, overrides from `config()` (a callable: a reload is seen
    at once)."""

    def __init__(
        self,
        policies: PolicyService,
        resolver: dns.asyncresolver.Resolver,
        config: Callable[[], Config],
        *,
        budget: float = LOOKUP_BUDGET,
        fresh_for: float = FRESH_FOR,
        max_domains: int = MAX_DOMAINS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policies = policies
        self.resolver = resolver
        self.config = config
        self.budget = budget
        self.fresh_for = fresh_for
        self.max_domains = max_domains
        self.clock = clock
        self.lookups = 0  # look-ups started (for tests and the benchmark)
        self._known: dict[str, tuple[MapFacts, float]] = {}
        self._inflight: dict[str, asyncio.Task[MapFacts]] = {}
        self._config_seen: Config | None = None

    async def facts(self, domain: str) -> MapFacts:
        """The facts for `domain` (a plain domain, lower-case A-labels)."""
        config = self.config()
        if config is not self._config_seen:  # reloaded: the overrides may differ
            self._known.clear()
            self._config_seen = config
        override = config.domain_tls(domain)
        if override in ANSWERED_BY_OVERRIDE:
            return MapFacts(domain, None, DaneState.OFF, "", override)  # nothing to look up
        known = self._known.get(domain)
        if known is not None:
            facts, looked_at = known
            if self.clock() - looked_at < self.fresh_for:
                return facts
            if _usable(facts, self.policies):
                self._refresh(domain)  # answered now from memory, fresher next time
                return facts
        task = self._refresh(domain)
        done, _ = await asyncio.wait({task}, timeout=self.budget)
        if done:
            return task.result()
        log.warning("socketmap.lookup_slow", domain=domain, budget=self.budget)
        return await self._fallback(domain)

    def fresh_until(self, domain: str) -> float:
        """When (on `clock`) the facts known for `domain` stop being fresh; 0 when none are."""
        known = self._known.get(domain)
        if known is not None:
            return known[1] + self.fresh_for
        if self.config().domain_tls(domain) in ANSWERED_BY_OVERRIDE:
            return self.clock() + self.fresh_for
        return 0.0

    def _refresh(self, domain: str) -> asyncio.Task[MapFacts]:
        task = self._inflight.get(domain)
        if task is None:
            self.lookups += 1
            task = asyncio.get_running_loop().create_task(self._look_up(domain))
            self._inflight[domain] = task
            task.add_done_callback(lambda done: self._finished(domain, done))
        return task

    def _finished(self, domain: str, task: asyncio.Task[MapFacts]) -> None:
        self._inflight.pop(domain, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("socketmap.lookup_failed", domain=domain, error=repr(error))

    async def _look_up(self, domain: str) -> MapFacts:
        dnssec = isinstance(self.resolver, DnssecResolver) and self.resolver.trust_ad
        config = self.config()
        sts: asyncio.Task[PolicyResult] | None = None
        if needs_sts(config.domain_tls(domain), literal=False):
            # The MTA-STS look-up runs beside the MX and TLSA look-ups, not after them.
            sts = asyncio.get_running_loop().create_task(self.policies.get(domain))
        try:
            # Without a trusted AD bit DANE cannot apply: no MX and TLSA look-ups; under an
            # unsigned MX RRset neither (`map_facts`): no address and TLSA look-ups.
            mx = MxResult(domain, MxStatus.OK)
            if dnssec:
                mx = await lookup_mx(domain, self.resolver, addresses_if_insecure=False)
            view = await lookup_destination(
                domain,
                config,
                resolver=self.resolver,
                sts=lambda _: sts if sts is not None else self.policies.get(domain),
                now=self.policies.clock(),
                mx=mx,
            )
        finally:
            if sts is not None and not sts.done():
                sts.cancel()
        facts = map_facts(view, dnssec=dnssec)
        if self.config() is config:  # not kept when a reload came in meanwhile
            self._remember(domain, facts)
        return facts

    def _remember(self, domain: str, facts: MapFacts) -> None:
        self._known.pop(domain, None)
        self._known[domain] = (facts, self.clock())
        while len(self._known) > self.max_domains:
            del self._known[next(iter(self._known))]

    async def _fallback(self, domain: str) -> MapFacts:
        """Facts for a look-up that is taking too long: the cached policy, else none."""
        entry = await asyncio.to_thread(self.policies.store.get, domain)
        kept = fallback(entry, self.policies.clock())
        override = self.config().domain_tls(domain)
        if kept is None:
            return MapFacts(domain, None, DaneState.OFF, "", override)
        sts = PolicyResult(domain, kept.policy, PolicySource.CACHED, expires_at=kept.expires_at)
        return MapFacts(domain, sts, DaneState.OFF, "", override)

    async def close(self) -> None:
        """Cancel the look-ups still running."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _usable(facts: MapFacts, policies: PolicyService) -> bool:
    """True while an answer from memory may still be given: its policy has not expired."""
    sts = facts.sts
    return sts is None or sts.expires_at is None or sts.expires_at > policies.clock()


async def live_facts(
    domain: str, config: Config, resolver: dns.asyncresolver.Resolver, sts: PolicyResult
) -> MapFacts:
    """The facts from live look-ups and a given MTA-STS result, without a cache (for
    `stsguard policy`, which shows what the map would answer)."""
    dnssec = isinstance(resolver, DnssecResolver) and resolver.trust_ad

    async def given(_domain: str) -> PolicyResult:
        return sts

    view = await lookup_destination(
        domain,
        config,
        resolver=resolver,
        sts=given,
        now=time.time(),
        mx=None if dnssec else MxResult(domain, MxStatus.OK),
    )
    return map_facts(view, dnssec=dnssec)
