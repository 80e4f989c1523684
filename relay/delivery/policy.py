"""The one destination policy: what TLS each MX host of a recipient domain gets, and why.

Delivery, `stsguard probe`, `stsguard policy`'s per-MX view, the Postfix policy map and REQUIRETLS
all take a domain's TLS rules from here. The composition is pure (`destination`, `plan_host`);
the look-ups it needs are made by `relay.delivery.policy_lookup`: `lookup_destination` (every MX
host at once) or, where MX hosts are looked at one by one (delivery), `lookup_host` for each.

    view = await lookup_destination(domain, config, resolver=r, sts=service.get, history=store.get)
    view.kind               # PolicyKind: mta-sts-enforce | mta-sts-testing | dane | dane-only |
                            #             override | none (DANE before MTA-STS, RFC 8461 2)
    view.sts_patterns       # the MTA-STS policy's mx patterns in policy order, () without one
    view.dane_on_every_mx   # every MX host has usable, DNSSEC-signed TLSA records
    view.dane_tempfail      # a TLSA look-up was bogus or failed (never a fall-back: RFC 7672 2.2)
    for plan in view.plans:             # one MxPlan per MX host, in delivery order
        plan.host, plan.kind            # the mechanism that governs this host
        plan.tls                        # TlsLevel: none | opportunistic | encrypt | verify | dane
        plan.pkix_name, plan.sts_pattern  # PKIX: the name the certificate must carry, the policy
                                        # pattern the host matched (STS-09)
        plan.tlsa, plan.dane_usable     # DANE: the host's TLSA look-up, usable records or not
        plan.report                     # ReportAs(policy type, domain, strings), None: no TLS-RPT
        plan.refusal, plan.refused_by   # not to be connected to, and why (a `Decision`)
        plan.on_failure                 # OnFailure when TLS cannot be had on this host
        plan.expect_starttls            # a missing STARTTLS is a finding (stripped)
        plan.sni                        # the name the handshake sends (SNI)
        plan.policy                     # the `relay.tls_rules.EffectivePolicy` the wire rules take

Piecewise (delivery looks an MX host up only when it gets to it; only `lookup_host` does I/O):

    dest = destination(domain, config, sts=policy_result, mx=mx_result)
    facts = await lookup_host(dest, host, resolver=r, history=store.get)
    plan = plan_host(dest, facts, last_mx=False, now=now)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from detect.history import HostHistory
from mtasts.match import mx_matches
from mtasts.model import PolicyResult
from relay.config import Config, DomainTls
from relay.decision import Decision, requiretls_domain_tls, requiretls_screen, screen_mx
from relay.delivery.dane_lookup import TlsaLookup
from relay.delivery.mx import MxHost, MxResult
from relay.tls_rules import (
    DANE_OVERRIDES,
    EffectivePolicy,
    Requirement,
    TlsaStatus,
    effective_policy,
)
from tlsrpt_emit.model import PolicyType


class PolicyKind(StrEnum):
    """Which mechanism sets a domain's (or one MX host's) TLS rules."""

    STS_ENFORCE = "mta-sts-enforce"
    STS_TESTING = "mta-sts-testing"
    DANE = "dane"  # signed TLSA records (RFC 7672)
    DANE_ONLY = "dane-only"  # local override: only MX hosts with DANE are used
    OVERRIDE = "override"  # `[domains."x"].tls` = none | opportunistic | encrypt | verify
    NONE = "none"  # nothing published: `[delivery].no_policy_tls`


class TlsLevel(StrEnum):
    """What TLS a session to the MX host must have."""

    NONE = "none"  # never STARTTLS (local override)
    OPPORTUNISTIC = "opportunistic"  # TLS when offered; without it, or unverified, still delivered
    ENCRYPT = "encrypt"  # TLS required, certificate not checked
    VERIFY = "verify"  # TLS required, PKIX certificate for the MX host name
    DANE = "dane"  # TLS required, certificate authenticated by the TLSA records


class OnFailure(StrEnum):
    """What a session that cannot have the TLS its plan asks for leads to."""

    NEXT_MX = "next-mx"  # this MX is unusable; the next one is tried (RFC 8461 5, TLS-07)
    DEFER = "defer"  # as next-mx, on the last MX host: a temporary failure
    DELIVER = "deliver-and-record"  # plaintext or unverified TLS, recorded (TLS-RPT, log); a
    # remembered-TLS downgrade still defers under `[detect].on_downgrade = "defer"`


class Refusal(StrEnum):
    """Why an MX host is not connected to at all."""

    DANE = "dane"  # bogus TLSA, or dane-only without TLSA: a reported failure (RFC 8460 4.3)
    NOT_IN_POLICY = "mx-not-in-policy"  # STS-11: enforce never uses an unlisted MX (not reported)
    REQUIRETLS = "requiretls"  # RFC 8689 4.2.1: not authenticated by DANE or MTA-STS enforce


@dataclass(frozen=True, slots=True)
class ReportAs:
    """What a session on the MX host is counted under in TLS-RPT (RFC 8460 4.4)."""

    policy_type: PolicyType
    policy_domain: str
    policy_strings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Destination:
    """A recipient domain's TLS rules before any MX host is looked at (see `destination`)."""

    domain: str
    domain_tls: DomainTls
    policy: EffectivePolicy  # the rules without DANE (override, MTA-STS, no_policy_tls)
    sts: PolicyResult | None  # the MTA-STS look-up, None when it was not made
    literal: bool = False  # an address literal: no policy at all (STS-08)
    mx_secure: bool = False  # the MX RRset was DNSSEC-validated (RFC 7672 2.2.1)
    tlsrpt: bool = True  # False: nothing is reported (report mail, RPT-10; address literals)
    history_days: int = 0  # `[detect].history_days`: how long remembered TLS counts

    @property
    def kind(self) -> PolicyKind:
        """The domain's kind before DANE look-ups (`DestinationView.kind` includes them)."""
        if self.domain_tls == DomainTls.DANE_ONLY:
            return PolicyKind.DANE_ONLY
        if self.domain_tls not in (DomainTls.MTA_STS, DomainTls.DANE):
            return PolicyKind.OVERRIDE
        if self.policy.requirement is Requirement.STS_ENFORCE:
            return PolicyKind.STS_ENFORCE
        if self.policy.requirement is Requirement.STS_TESTING:
            return PolicyKind.STS_TESTING
        return PolicyKind.NONE

    @property
    def sts_patterns(self) -> tuple[str, ...]:
        """The MTA-STS policy's mx patterns in policy order, when one applies."""
        policy = self.policy.policy
        return policy.mx if policy is not None and self.policy.is_sts else ()

    @property
    def policy_id(self) -> str | None:
        """The `_mta-sts` record id of the applied MTA-STS policy (STS-12), else None."""
        if self.sts is None or self.sts.record is None or not self.policy.is_sts:
            return None
        return self.sts.record.id

    def wants_tlsa(self, host: MxHost) -> bool:
        """True when the TLSA records of `host` can change its plan (RFC 7672 2.2.2: only a
        host with addresses; not under a local override that keeps DANE out, STS-08, or
        `TLS-Required: No`)."""
        return (
            not self.literal
            and self.domain_tls in DANE_OVERRIDES
            and not self.policy.tls_required_no
            and bool(host.addresses)
        )


# `[domains."x"].tls` values under which MTA-STS applies: `dane` falls back to it where an MX
# host has no DANE, as without an override.
STS_APPLIED = (DomainTls.MTA_STS, DomainTls.DANE)
# Overrides under which the MTA-STS policy is still looked up, only to report sessions under it
# when the domain publishes one (RFC 8460 4.3); `dane`/`dane-only` report under TLSA.
STS_REPORTED = (DomainTls.NONE, DomainTls.OPPORTUNISTIC, DomainTls.ENCRYPT, DomainTls.VERIFY)


def needs_sts(domain_tls: DomainTls, *, literal: bool, requiretls: bool = False) -> bool:
    """True when the domain's MTA-STS policy must be looked up (STS-08: not for an address
    literal): to apply it (`STS_APPLIED`), or, under an override of `STS_REPORTED`, to report
    under it.
    REQUIRETLS takes no local override."""
    applied = requiretls_domain_tls(domain_tls, requiretls=requiretls)
    return not literal and (applied in STS_APPLIED or applied in STS_REPORTED)


def destination(
    domain: str,
    config: Config,
    *,
    sts: PolicyResult | None,
    mx: MxResult | None = None,
    tls_required_no: bool = False,
    report_mail: bool = False,
    requiretls: bool = False,
) -> Destination:
    """Compose a domain's rules from its override, the MTA-STS result and the config (pure).

    `tls_required_no` is RFC 8689's `TLS-Required: No` (MTA-STS and DANE failures ignored);
    `report_mail` a TLS-RPT report in transit, treated alike and never reported (RPT-10);
    `requiretls` RFC 8689's REQUIRETLS, which takes no local override and no `TLS-Required: No`.
    """
    domain_tls = requiretls_domain_tls(config.domain_tls(domain), requiretls=requiretls)
    literal = domain.startswith("[") or (mx is not None and mx.literal)
    policy = effective_policy(
        sts if not literal else None,
        domain_tls=domain_tls,
        no_policy_tls=config.delivery.no_policy_tls,
        tls_required_no=tls_required_no or report_mail,
        on_downgrade=config.detect.on_downgrade,
        requiretls=requiretls,
    )
    return Destination(
        domain,
        domain_tls,
        policy,
        sts,
        literal=literal,
        mx_secure=mx is not None and mx.secure,
        tlsrpt=not report_mail and not literal,
        history_days=config.detect.history_days,
    )


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What was looked up about one MX host: its TLSA records (None: not looked up, see
    `Destination.wants_tlsa`) and what the relay remembers of its TLS."""

    host: str
    tlsa: TlsaLookup | None = None
    history: HostHistory | None = None


@dataclass(frozen=True, slots=True)
class MxPlan:
    """Everything about TLS on one MX host, decided before connecting (see the module doc)."""

    host: str
    kind: PolicyKind
    tls: TlsLevel
    policy: EffectivePolicy
    report: ReportAs | None
    on_failure: OnFailure
    expect_starttls: bool
    last_mx: bool = False  # no MX host is left after this one
    refusal: Decision | None = None
    refused_by: Refusal | None = None
    pkix_name: str | None = None
    sts_pattern: str | None = None
    tlsa: TlsaLookup | None = None
    history: HostHistory | None = None

    @property
    def sni(self) -> str:
        """The name the TLS handshake sends (SNI): the MX host name (STS-10), under DANE the
        TLSA base domain, the CNAME-expanded name where that is signed (RFC 7672 8.1)."""
        return self.policy.dane_base or self.host

    @property
    def dane_usable(self) -> bool:
        """True when the host has DNSSEC-signed TLSA records of which one is usable."""
        return (
            self.tlsa is not None
            and self.tlsa.status is TlsaStatus.SECURE
            and self.tlsa.usable != ()
        )

    @property
    def dane_tempfail(self) -> bool:
        """True when the host's TLSA look-up was bogus or failed (a temporary failure)."""
        return self.tlsa is not None and self.tlsa.status is TlsaStatus.BOGUS


_LEVELS = {
    Requirement.NONE: TlsLevel.NONE,
    Requirement.OPPORTUNISTIC: TlsLevel.OPPORTUNISTIC,
    Requirement.ENCRYPT: TlsLevel.ENCRYPT,
    Requirement.VERIFY: TlsLevel.VERIFY,
    Requirement.STS_ENFORCE: TlsLevel.VERIFY,
    Requirement.STS_TESTING: TlsLevel.OPPORTUNISTIC,
    Requirement.DANE: TlsLevel.DANE,
    Requirement.DANE_UNUSABLE: TlsLevel.ENCRYPT,
}


def tls_level(policy: EffectivePolicy) -> TlsLevel:
    """The TLS a session must have under `policy` (`TLS-Required: No` makes it opportunistic)."""
    if policy.tls_required_no and policy.requirement is Requirement.STS_ENFORCE:
        return TlsLevel.OPPORTUNISTIC
    return _LEVELS[policy.requirement]


def expects_starttls(
    policy: EffectivePolicy, history: HostHistory | None, *, now: float, history_days: int
) -> bool:
    """True when STARTTLS missing from the EHLO reply is a finding (stripped), not a fact of life:
    a policy that asks for TLS (MTA-STS testing included, or published under an override), or a
    host that offered STARTTLS within `history_days` (remembered TLS)."""
    if policy.strict or policy.is_sts or policy.published is not None:
        return True
    if history is None or history.last_starttls_at is None:
        return False
    return now - history.last_starttls_at <= history_days * 86400


def remembering(plan: MxPlan, history: HostHistory | None, *, now: float, days: int) -> MxPlan:
    """`plan` once the host's remembered TLS is known (delivery reads it when it connects)."""
    expect = expects_starttls(plan.policy, history, now=now, history_days=days)
    return replace(plan, history=history, expect_starttls=expect)


def report_as(
    dest: Destination, policy: EffectivePolicy, refused_by: Refusal | None
) -> ReportAs | None:
    """The TLS-RPT policy a session on the host counts under (RFC 8460 4.4)."""
    if not dest.tlsrpt:
        return None
    if policy.is_dane:
        strings = tuple(record.to_text() for record in policy.tlsa)
        return ReportAs(PolicyType.TLSA, dest.domain, strings)
    if refused_by is Refusal.DANE:
        # No records to name when the TLSA look-up failed or found none.
        return ReportAs(PolicyType.TLSA, dest.domain)
    if policy.is_sts and policy.policy is not None:
        return ReportAs(PolicyType.STS, dest.domain, policy.policy.policy_strings)
    if policy.published is not None:  # a local override applied instead (RFC 8460 4.3)
        return ReportAs(PolicyType.STS, dest.domain, policy.published.policy_strings)
    return ReportAs(PolicyType.NO_POLICY_FOUND, dest.domain)


def plan_host(dest: Destination, facts: HostFacts, *, last_mx: bool, now: float) -> MxPlan:
    """The plan for one MX host (pure). `last_mx`: no MX host is left after this one."""
    policy, refusal = dest.policy, None
    if facts.tlsa is not None and not dest.literal:
        policy, refusal = facts.tlsa.policy_for(policy, domain_tls=dest.domain_tls, last_mx=last_mx)
    refused_by = Refusal.DANE if refusal is not None else None
    if refusal is None:
        # REQUIRETLS first: under testing an unlisted MX is unauthenticated (a bounce), not
        # outside an enforced list (a deferral).
        listed = dest.policy.requirement is Requirement.STS_ENFORCE and bool(
            dest.policy.policy and dest.policy.policy.allows(facts.host)
        )
        refusal = requiretls_screen(policy, facts.host, mx_secure=dest.mx_secure, sts_listed=listed)
        refused_by = Refusal.REQUIRETLS if refusal is not None else None
    if refusal is None:
        refusal = screen_mx(policy, facts.host)
        refused_by = Refusal.NOT_IN_POLICY if refusal is not None else None
    kind = dest.kind
    if policy.is_dane:
        kind = PolicyKind.DANE_ONLY if kind is PolicyKind.DANE_ONLY else PolicyKind.DANE
    level = tls_level(policy)
    if policy.strict:
        on_failure = OnFailure.DEFER if last_mx else OnFailure.NEXT_MX
    else:
        on_failure = OnFailure.DELIVER
    sts = policy.policy if policy.is_sts else None
    return MxPlan(
        facts.host,
        kind,
        level,
        policy,
        report_as(dest, policy, refused_by),
        on_failure,
        expects_starttls(policy, facts.history, now=now, history_days=dest.history_days),
        last_mx,
        refusal,
        refused_by,
        pkix_name=facts.host if level in (TlsLevel.VERIFY, TlsLevel.OPPORTUNISTIC) else None,
        sts_pattern=next((p for p in sts.mx if mx_matches(p, facts.host)), None) if sts else None,
        tlsa=facts.tlsa,
        history=facts.history,
    )


@dataclass(frozen=True, slots=True)
class DestinationView:
    """A domain's rules with every MX host planned (`lookup_destination`)."""

    destination: Destination
    mx: MxResult
    plans: tuple[MxPlan, ...] = ()

    @property
    def kind(self) -> PolicyKind:
        """The domain's kind; DANE when any MX host has signed TLSA records (DANE is applied
        before MTA-STS, RFC 8461 2)."""
        base = self.destination.kind
        if base is PolicyKind.DANE_ONLY or base is PolicyKind.OVERRIDE:
            return base
        if any(plan.policy.is_dane for plan in self.plans):
            return PolicyKind.DANE
        return base

    @property
    def sts_patterns(self) -> tuple[str, ...]:
        return self.destination.sts_patterns

    @property
    def dane_on_every_mx(self) -> bool:
        return bool(self.plans) and all(plan.dane_usable for plan in self.plans)

    @property
    def dane_tempfail(self) -> bool:
        return any(plan.dane_tempfail for plan in self.plans)
