"""The DNS resolver every part uses, built from `[dns]`: the system one only when unset.

With `[dns].dnssec = "ad"` queries carry the DO and AD bits and `query` reports each answer as
secure (the validating resolver set AD), insecure, or bogus (it answered SERVFAIL: a validation
failure or a broken authority, temporary either way, never "no records"). DANE needs this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.resolver
import structlog

from relay.config import DnsConfig

log = structlog.get_logger(__name__)


class Security(StrEnum):
    """The DNSSEC state of one answer (RFC 4035 4.3), as far as we may believe the resolver."""

    SECURE = "secure"
    INSECURE = "insecure"
    BOGUS = "bogus"


class DnssecResolver(dns.asyncresolver.Resolver):
    """An async resolver that knows whether its AD bit may be believed (`trust_ad`)."""

    trust_ad: bool = False


class AnswerCache(dns.resolver.LRUCache):
    """dnspython's TTL-honouring cache, plus `query`'s finished `DnsAnswer` per (name, type)
    until the same expiry (no-data answers included): a cached MX, A and AAAA for every message
    cost 85 us of dnspython's resolution machinery; a hit here costs a dict look-up. `flush`
    empties both."""

    ANSWERS_MAX = 10_000

    def __init__(self, max_size: int = 100_000) -> None:
        super().__init__(max_size)
        self.answers: dict[tuple[str, str], tuple[float, DnsAnswer]] = {}

    def answer(self, name: str, rdtype: str, now: float) -> DnsAnswer | None:
        hit = self.answers.get((name, rdtype))
        if hit is None or hit[0] <= now:
            return None
        return hit[1]

    def keep(self, answer: DnsAnswer, expires: float) -> None:
        if len(self.answers) >= self.ANSWERS_MAX:
            self.answers.clear()  # bounded; the LRU cache behind it still has them
        self.answers[(answer.name, answer.rdtype)] = (expires, answer)

    def flush(self, key: object = None) -> None:
        super().flush(key)  # type: ignore[arg-type]
        self.answers.clear()


def make_resolver(config: DnsConfig) -> DnssecResolver:
    """An async resolver for `[dns].nameservers` (host:port each), else the system one."""
    if not config.nameservers:
        resolver = DnssecResolver()
    else:
        resolver = DnssecResolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(host, port) for host, port in config.nameserver_addresses
        ]
    # Answers are cached for their TTL: MX, A, TLSA and the `_mta-sts` TXT record are asked for
    # on every delivery, and a burst of mail to one domain should cost one query, not one per
    # message.
    resolver.cache = AnswerCache()
    resolver.lifetime = float(config.timeout)
    resolver.timeout = min(float(config.timeout), 3.0)
    if config.dnssec_mode == "ad":
        # DO asks for DNSSEC records and AD for the resolver's verdict (RFC 6840 5.7).
        resolver.trust_ad = True
        resolver.use_edns(0, dns.flags.DO, 1232)
        resolver.flags = dns.flags.RD | dns.flags.AD
    return resolver


def dane_warning(config: DnsConfig) -> str | None:
    """One line for the start-up log when DANE cannot work with this `[dns]`, else None."""
    if config.dnssec_mode == "ad":
        return None
    if config.dnssec == "off":
        return "[dns].dnssec = off: DNSSEC is not trusted, so DANE (TLSA) is not used"
    return (
        "[dns].nameservers are not all on loopback, so their AD bit is not trusted and DANE "
        'is not used; run a local validating resolver or set [dns].dnssec = "ad"'
    )


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """One answer: `texts` in presentation form (empty for no data, None for NXDOMAIN)."""

    name: str
    rdtype: str
    texts: tuple[str, ...] | None
    security: Security
    canonical_name: str  # the owner after following CNAMEs
    ttl: int = 0

    @property
    def secure(self) -> bool:
        return self.security is Security.SECURE


class DnsTempFail(Exception):
    """SERVFAIL or a timeout. `bogus` when a validating resolver (trusted AD) gave SERVFAIL."""

    def __init__(self, message: str, *, bogus: bool = False) -> None:
        super().__init__(message)
        self.bogus = bogus


def _security(
    resolver: dns.asyncresolver.Resolver, response: dns.message.Message | None
) -> Security:
    trusted = isinstance(resolver, DnssecResolver) and resolver.trust_ad
    if trusted and response is not None and response.flags & dns.flags.AD:
        return Security.SECURE
    return Security.INSECURE


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


async def query(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> DnsAnswer:
    """Ask for `name`/`rdtype`; `DnsTempFail` for SERVFAIL (bogus under a trusted AD) or timeout."""
    cache = resolver.cache if isinstance(resolver.cache, AnswerCache) else None
    if cache is not None and (hit := cache.answer(name, rdtype, time.time())) is not None:
        return hit
    try:
        answer = await resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN as exc:
        responses = exc.kwargs.get("responses") or {}
        response = next(iter(responses.values()), None)
        return DnsAnswer(name, rdtype, None, _security(resolver, response), name)
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
        trusted = isinstance(resolver, DnssecResolver) and resolver.trust_ad
        bogus = trusted and isinstance(exc, dns.resolver.NoNameservers)
        raise DnsTempFail(f"{rdtype} {name}: {exc}", bogus=bogus) from exc
    except dns.exception.DNSException as exc:
        raise DnsTempFail(f"{rdtype} {name}: {exc}") from exc
    rrset = answer.rrset
    texts = tuple(rdata.to_text() for rdata in rrset) if rrset is not None else ()
    result = DnsAnswer(
        name,
        rdtype,
        texts,
        _security(resolver, answer.response),
        _text(answer.canonical_name),
        rrset.ttl if rrset is not None else 0,
    )
    if cache is not None and answer.expiration > time.time():
        # The expiry dnspython's cache gives it too (a no-data answer: the SOA's negative TTL).
        cache.keep(result, answer.expiration)
    return result
