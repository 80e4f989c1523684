"""What DANE means for a domain's MX hosts, for `stsguard policy` and `stsguard probe`.

Per MX host: the DNSSEC state of the MX RRset and of its address and TLSA RRsets, the TLSA records,
and which policy the relay would apply (DANE, MTA-STS, a local override, or none) and why: the
plan `relay.delivery.policy` makes for the host, as delivery makes it. Live look-ups only.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field, replace
from typing import Any

import dns.asyncresolver

from detect.dane import DaneVerdict, check_chain
from mtasts.model import Policy, PolicyResult, PolicySource
from relay.config import Config
from relay.delivery.dane_lookup import TlsaLookup, TlsaStatus, lookup_tlsa
from relay.delivery.mx import MxStatus, lookup_mx
from relay.delivery.policy import MxPlan, PolicyKind, Refusal
from relay.delivery.policy_lookup import lookup_destination
from relay.resolver import DnssecResolver
from relay.tls_rules import Requirement


@dataclass(frozen=True, slots=True)
class MxDane:
    """One MX host as DANE sees it."""

    host: str
    preference: int
    address_dnssec: str
    tlsa: TlsaLookup
    applies: str  # dane | mta-sts | override | none | deferred
    why: str

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "preference": self.preference,
            "address_dnssec": self.address_dnssec,
            "tlsa_dnssec": str(self.tlsa.status),
            "tlsa_base_domain": self.tlsa.base_domain or None,
            "tlsa": list(self.tlsa.policy_strings),
            "tlsa_note": self.tlsa.reason,
            "policy": self.applies,
            "why": self.why,
        }


@dataclass(slots=True)
class DaneView:
    domain: str
    dnssec: str  # the resolver's mode: ad | off
    mx_dnssec: str = "unknown"
    hosts: list[MxDane] = field(default_factory=list)
    error: str | None = None

    @property
    def problems(self) -> list[str]:
        found = [f"{h.host}: {h.why}" for h in self.hosts if h.applies == "deferred"]
        found += [
            f"{h.host}: signed TLSA but no usable record (only DANE-TA(2)/DANE-EE(3) count)"
            for h in self.hosts
            if h.tlsa.status is TlsaStatus.SECURE and not h.tlsa.usable
        ]
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "dnssec": self.dnssec,
            "mx_dnssec": self.mx_dnssec,
            "error": self.error,
            "mx_hosts": [h.as_json() for h in self.hosts],
        }

    def as_text(self) -> list[str]:
        lines = [f"DANE:         DNSSEC {self.dnssec}, MX RRset {self.mx_dnssec}"]
        if self.error:
            lines.append(f"  {self.error}")
        for h in self.hosts:
            lines.append(
                f"  MX {h.host}: addresses {h.address_dnssec}, TLSA {h.tlsa.status}"
                + (f" at _25._tcp.{h.tlsa.base_domain}" if h.tlsa.base_domain else "")
            )
            lines += [f"    TLSA {text}" for text in h.tlsa.policy_strings]
            lines.append(f"    policy: {h.applies} ({h.why})")
        return lines


def _security(flag: bool, trusted: bool) -> str:
    if not trusted:
        return "unknown (dnssec off)"
    return "secure" if flag else "insecure"


def applied_policy(domain: str, domain_tls: str, plan: MxPlan) -> tuple[str, str]:
    """(policy kind, why) of the plan delivery would follow on this MX host."""
    tlsa, policy = plan.tlsa, plan.policy
    if plan.kind is PolicyKind.OVERRIDE:
        return "override", f'[domains."{domain}"] tls = "{domain_tls}" (DANE not used)'
    if plan.refused_by is Refusal.DANE and plan.refusal is not None:
        return "deferred", f"{plan.refusal.result_type}: {plan.refusal.reason}"
    if policy.requirement is Requirement.DANE:
        return "dane", "signed TLSA records decide; MTA-STS is not consulted (RFC 8461 2)"
    if policy.requirement is Requirement.DANE_UNUSABLE:
        return "dane", "signed TLSA, none usable: TLS required, certificate not checked"
    no_dane = f"no DANE ({tlsa.reason or tlsa.status})" if tlsa else "no DANE"
    if plan.kind in (PolicyKind.STS_ENFORCE, PolicyKind.STS_TESTING):
        mode = "enforce" if plan.kind is PolicyKind.STS_ENFORCE else "testing"
        return "mta-sts", f"{no_dane}; MTA-STS mode {mode}"
    return "none", f"{no_dane}; no_policy_tls = {policy.requirement}"


async def dane_view(
    domain: str, config: Config, resolver: dns.asyncresolver.Resolver, sts: Policy | None
) -> DaneView:
    """Each MX host's DNSSEC state, TLSA records and the policy its plan applies (`sts` is the
    domain's MTA-STS policy as looked up by the caller)."""
    trusted = isinstance(resolver, DnssecResolver) and resolver.trust_ad
    view = DaneView(domain, "ad" if trusted else "off")
    mx = await lookup_mx(domain, resolver)
    if mx.status is not MxStatus.OK:
        view.error = f"MX look-up: {mx.status}: {mx.reason}"
        return view
    view.mx_dnssec = _security(mx.secure, trusted)
    hosts = tuple(sorted(mx.hosts, key=lambda h: (h.preference, h.name)))
    live = PolicyResult(domain, sts, PolicySource.FRESH if sts else PolicySource.NONE)

    async def sts_lookup(_domain: str) -> PolicyResult:
        return live

    planned = await lookup_destination(
        domain,
        config,
        resolver=resolver,
        sts=sts_lookup,
        now=time.time(),
        mx=replace(mx, hosts=hosts),
    )
    domain_tls = str(planned.destination.domain_tls)
    for host, plan in zip(hosts, planned.plans, strict=True):
        # Shown even where a local override keeps DANE out.
        tlsa = plan.tlsa or await lookup_tlsa(resolver, host)
        applies, why = applied_policy(domain, domain_tls, plan)
        view.hosts.append(
            MxDane(host.name, host.preference, _security(host.secure, trusted), tlsa, applies, why)
        )
    return view


def check_presented(
    tlsa: TlsaLookup, chain_der: tuple[bytes, ...], *, now: dt.datetime
) -> DaneVerdict | None:
    """The presented chain against the host's signed TLSA records (None when DANE does not
    apply)."""
    if tlsa.status is not TlsaStatus.SECURE:
        return None
    return check_chain(tlsa.records, chain_der, names=tlsa.names, now=now)
