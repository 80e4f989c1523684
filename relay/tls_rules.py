"""The TLS rules of one recipient domain, and of one MX host once DANE is known (pure).

`effective_policy` combines a local override (`[domains."x"].tls`), the MTA-STS result and the
no-policy default into an `EffectivePolicy`; `relay.decision.dane_for_mx` narrows it per MX host;
`relay.delivery.policy` composes the whole plan, and `relay.decision` decides on the wire with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from detect.dane import TlsaRecord
from mtasts.model import Mode, Policy, PolicyResult
from relay.config import DomainTls
from tlsrpt_emit.model import ResultType


class Requirement(StrEnum):
    """What TLS the recipient domain requires, after overrides and MTA-STS are combined."""

    NONE = "none"  # local override: never STARTTLS
    OPPORTUNISTIC = "opportunistic"  # TLS when offered, any certificate, plaintext otherwise
    ENCRYPT = "encrypt"  # TLS required, certificate not checked
    VERIFY = "verify"  # TLS required with a valid certificate (local override)
    STS_ENFORCE = "sts-enforce"  # MTA-STS enforce (RFC 8461 section 5)
    STS_TESTING = "sts-testing"  # MTA-STS testing: deliver anyway, report
    DANE = "dane"  # secure usable TLSA records: TLS authenticated by them (RFC 7672)
    DANE_UNUSABLE = "dane-unusable"  # secure TLSA, none usable: TLS required, unauthenticated


class TlsaStatus(StrEnum):
    """What the TLSA look-up of one MX host found (`relay.delivery.dane_lookup`)."""

    SECURE = "secure"  # signed TLSA records: DANE decides for this host
    NONE = "none"  # no TLSA, or not signed: DANE does not apply
    BOGUS = "bogus"  # validation failed or the look-up failed: temporary failure
    OFF = "off"  # DNSSEC is not trusted here (`[dns].dnssec = "off"`)


VALIDATION_FAILURE = ResultType.VALIDATION_FAILURE
STARTTLS_NOT_SUPPORTED = ResultType.STARTTLS_NOT_SUPPORTED


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """The TLS rules for one recipient domain. `policy` is the MTA-STS policy when one applies."""

    requirement: Requirement
    policy: Policy | None = None
    tls_required_no: bool = False  # RFC 8689 `TLS-Required: No`: MTA-STS failures are ignored
    on_downgrade: str = "defer"  # defer | log: a remembered-TLS downgrade without a policy
    tlsa: tuple[TlsaRecord, ...] = ()  # DANE: the MX host's secure TLSA RRset
    dane_names: tuple[str, ...] = ()  # DANE-TA reference identifiers (RFC 7672 3.2.2)
    dane_base: str = ""  # the TLSA base domain: SNI under DANE (RFC 7672 8.1)
    requiretls: bool = False  # RFC 8689: authenticated MX, validated TLS, REQUIRETLS offered
    # The MTA-STS policy (enforce or testing) the domain publishes when a local override is
    # applied instead: not enforced, but sessions are reported under it (RFC 8460 4.3).
    published: Policy | None = None

    @property
    def is_sts(self) -> bool:
        return self.requirement in (Requirement.STS_ENFORCE, Requirement.STS_TESTING)

    @property
    def reports_sts(self) -> bool:
        """True when sessions are counted under an MTA-STS policy, applied or only published."""
        return (self.is_sts and self.policy is not None) or self.published is not None

    @property
    def is_dane(self) -> bool:
        return self.requirement in (Requirement.DANE, Requirement.DANE_UNUSABLE)

    @property
    def strict(self) -> bool:
        """True when a TLS failure stops delivery to this MX (never plaintext, never HELO)."""
        if self.requiretls:
            return True
        if self.requirement in (
            Requirement.STS_ENFORCE,
            Requirement.DANE,
            Requirement.DANE_UNUSABLE,
        ):
            return not self.tls_required_no
        return self.requirement in (Requirement.ENCRYPT, Requirement.VERIFY)

    @property
    def needs_valid_cert(self) -> bool:
        """True when the certificate must validate: PKIX, or under DANE the TLSA records."""
        if self.requiretls:
            return True
        unauthenticated = (Requirement.ENCRYPT, Requirement.DANE_UNUSABLE)
        return self.strict and self.requirement not in unauthenticated

    @property
    def mode(self) -> str:
        """The policy mode for logs: enforce | testing | none, or the local requirement."""
        if self.policy is not None and self.is_sts:
            return str(self.policy.mode)
        return str(self.requirement)


def effective_policy(
    result: PolicyResult | None,
    *,
    domain_tls: DomainTls = DomainTls.MTA_STS,
    no_policy_tls: str = "opportunistic",
    tls_required_no: bool = False,
    on_downgrade: str = "defer",
    requiretls: bool = False,
) -> EffectivePolicy:
    """Combine a local override (`[domains."x"].tls`), the MTA-STS result and the no-policy default.

    A policy in mode none counts as no policy (RFC 8461 section 5). Under REQUIRETLS the caller
    passes `requiretls_domain_tls(...)` as `domain_tls` and `TLS-Required: No` is ignored.
    """
    if requiretls:
        plain = effective_policy(
            result, domain_tls=domain_tls, no_policy_tls=no_policy_tls, on_downgrade=on_downgrade
        )
        return replace(plain, requiretls=True)
    if domain_tls == DomainTls.DANE_ONLY:
        # No MX host without DANE is used (`dane_for_mx`); this only stands for "verify".
        return EffectivePolicy(Requirement.VERIFY, None, tls_required_no, on_downgrade)
    policy = result.policy if result is not None else None
    if domain_tls not in (DomainTls.MTA_STS, DomainTls.DANE):
        published = policy if policy is not None and policy.mode is not Mode.NONE else None
        return EffectivePolicy(
            Requirement(domain_tls), None, tls_required_no, on_downgrade, published=published
        )
    if policy is not None and policy.mode is Mode.ENFORCE:
        return EffectivePolicy(Requirement.STS_ENFORCE, policy, tls_required_no, on_downgrade)
    if policy is not None and policy.mode is Mode.TESTING:
        return EffectivePolicy(Requirement.STS_TESTING, policy, tls_required_no, on_downgrade)
    return EffectivePolicy(Requirement(no_policy_tls), None, tls_required_no, on_downgrade)


# `[domains."x"].tls` values that let DANE in
DANE_OVERRIDES = (DomainTls.MTA_STS, DomainTls.DANE, DomainTls.DANE_ONLY)
