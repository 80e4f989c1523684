"""TLSA look-up for one MX host (RFC 7672 2.2), with the DNSSEC state that decides whether DANE
applies. The pure check of the presented chain is `detect.dane.check_chain`.

- DANE needs `[dns].dnssec = "ad"` (`relay.resolver`): without a trusted AD bit nothing is secure.
- Only a host whose address records are secure is looked up (2.2.2); an MX RRset that is insecure
  still allows it (2.2.1: the MX host's own TLSA records protect the connection to that host).
- When the address records were reached through a secure CNAME, TLSA is asked first at the
  expanded name and then at the MX host name (2.2.3); the name where it was found is the TLSA base
  domain, and both names are reference identifiers for DANE-TA (3.2.2).
- SERVFAIL from the validating resolver is bogus: a temporary failure, never "no TLSA".
- Answers are cached by the resolver for their TTL, like every other DNS answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.asyncresolver

from detect.dane import TlsaRecord, usable_records
from relay.config import DomainTls
from relay.decision import Decision, dane_for_mx
from relay.delivery.mx import MxHost
from relay.resolver import DnssecResolver, DnsTempFail, query
from relay.tls_rules import EffectivePolicy, TlsaStatus

__all__ = ["TlsaLookup", "TlsaStatus", "candidate_bases", "lookup_tlsa", "tlsa_name"]


@dataclass(frozen=True, slots=True)
class TlsaLookup:
    """What `_25._tcp.<host>` gave. `names` are the reference identifiers for DANE-TA."""

    status: TlsaStatus
    records: tuple[TlsaRecord, ...] = ()
    base_domain: str = ""
    names: tuple[str, ...] = ()
    reason: str = ""

    def policy_for(
        self, policy: EffectivePolicy, *, domain_tls: DomainTls, last_mx: bool
    ) -> tuple[EffectivePolicy, Decision | None]:
        """`relay.decision.dane_for_mx` with what this look-up found."""
        return dane_for_mx(
            policy,
            self.status,
            self.records,
            self.names,
            domain_tls=domain_tls,
            reason=self.reason,
            base=self.base_domain,
            last_mx=last_mx,
        )

    @property
    def usable(self) -> tuple[TlsaRecord, ...]:
        return usable_records(self.records)

    @property
    def policy_strings(self) -> tuple[str, ...]:
        """The records in presentation form, as TLS-RPT's `policy-string` (RFC 8460 4.4)."""
        return tuple(r.to_text() for r in self.records)


def tlsa_name(host: str, port: int = 25) -> str:
    return f"_{port}._tcp.{host.rstrip('.').lower()}"


def candidate_bases(host: MxHost) -> tuple[str, ...]:
    """TLSA base domains to try, in order (RFC 7672 2.2.3): the CNAME-expanded name, then the
    MX host name. Without a secure CNAME only the host name."""
    name = host.name.rstrip(".").lower()
    expanded = (host.canonical_name or name).rstrip(".").lower()
    if host.secure and expanded != name:
        return (expanded, name)
    return (name,)


async def lookup_tlsa(
    resolver: dns.asyncresolver.Resolver, host: MxHost, *, port: int = 25
) -> TlsaLookup:
    """The TLSA records that apply to `host`, or why none do."""
    if not (isinstance(resolver, DnssecResolver) and resolver.trust_ad):
        return TlsaLookup(TlsaStatus.OFF, reason="DNSSEC not trusted ([dns].dnssec = off)")
    if not host.secure:
        return TlsaLookup(TlsaStatus.NONE, reason=f"{host.name}: address records not DNSSEC-signed")
    names = tuple(dict.fromkeys((host.name.rstrip(".").lower(), *candidate_bases(host))))
    reasons: list[str] = []
    for base in candidate_bases(host):
        qname = tlsa_name(base, port)
        try:
            answer = await query(resolver, qname, "TLSA")
        except DnsTempFail as exc:
            what = "DNSSEC validation failed" if exc.bogus else "look-up failed"
            reason = f"{what}: {exc}"
            return TlsaLookup(TlsaStatus.BOGUS, base_domain=base, names=names, reason=reason)
        if not answer.texts:
            reasons.append(f"{qname}: no TLSA ({answer.security})")
            continue
        if not answer.secure:
            # RFC 7672 2.2: insecure TLSA records are not used.
            reasons.append(f"{qname}: TLSA not signed")
            continue
        records: list[TlsaRecord] = []
        for text in answer.texts:
            try:
                records.append(TlsaRecord.from_text(text))
            except ValueError:
                continue
        return TlsaLookup(
            TlsaStatus.SECURE, tuple(records), base, names, f"{qname}: {len(records)} TLSA"
        )
    return TlsaLookup(TlsaStatus.NONE, names=names, reason="; ".join(reasons))
