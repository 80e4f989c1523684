"""The lab's scenario table: each attack under each policy set-up, with its expected outcome.

A scenario names the recipient domain's set-up (policy mode, or no policy, or no policy but a host
that spoke TLS before), what the attacker or the set-up does, and what must come out: delivered or
not, over TLS or not, the finding kind, and the TLS-RPT result type of the session.

REQUIRETLS scenarios (`requiretls_scenarios`, RFC 8689) send over STARTTLS with
``MAIL FROM:<...> REQUIRETLS`` to an MX that offers REQUIRETLS after STARTTLS (unless the set-up
says it does not): delivered only with the parameter seen at the MX, bounced with the status
`Expected.bounce` names, or deferred; never in the clear. The TLS-RPT results are those the same
session has without REQUIRETLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PolicySetup(StrEnum):
    """How the recipient domain is set up."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"  # an MTA-STS policy in mode none
    NO_POLICY = "no-policy"
    REMEMBERED = "no-policy-remembered-tls"  # no policy, but the MX spoke TLS in an earlier session
    DANE_EE = "dane-ee"  # signed TLSA 3 1 1 for the MX's own key (needs unbound)
    DANE_TA = "dane-ta"  # signed TLSA 2 0 1 for the lab CA, which the MX sends (needs unbound)
    DANE_STS_TESTING = "dane-ee-sts-testing"  # DANE-EE and a weaker MTA-STS testing policy
    DANE_ONLY = "dane-only-no-tlsa"  # `tls = "dane-only"` override, but the domain has no TLSA

    @property
    def dane(self) -> bool:
        """True when the set-up needs a validating resolver (the lab's unbound)."""
        return self in _DANE_SETUPS


class Attack(StrEnum):
    """What the on-path attacker does, or how the set-up is broken."""

    NONE = "none"
    STRIP = "strip"
    GARBLE = "garble"
    STARTTLS_454 = "starttls-454"
    STARTTLS_501 = "starttls-501"
    STARTTLS_BAD_CODE = "starttls-bad-code"
    INJECT = "inject"
    EHLO_502 = "ehlo-502"
    INTERCEPT = "intercept"
    INTERCEPT_WRONG_NAME = "intercept-wrong-name"
    SMUGGLE = "smuggle"
    # set-ups without an on-path attacker
    EXPIRED_CERT = "expired-cert"
    SPOOFED_MX = "spoofed-mx"
    POLICY_HOST_BLOCKED = "policy-host-blocked"
    TXT_REMOVED = "txt-removed"
    DNSSEC_BOGUS = "dnssec-bogus"  # the attacker rewrites the TLSA answer: signatures fail
    NO_REQUIRETLS = "mx-without-requiretls"  # the MX does not offer REQUIRETLS after STARTTLS

    @property
    def on_path(self) -> bool:
        """True when the attacker proxy sits in front of the MX."""
        return self in _PROXY_ATTACKS


_PROXY_ATTACKS = frozenset(
    {
        Attack.STRIP,
        Attack.GARBLE,
        Attack.STARTTLS_454,
        Attack.STARTTLS_501,
        Attack.STARTTLS_BAD_CODE,
        Attack.INJECT,
        Attack.EHLO_502,
        Attack.INTERCEPT,
        Attack.INTERCEPT_WRONG_NAME,
    }
)

_DANE_SETUPS = frozenset(
    {
        PolicySetup.DANE_EE,
        PolicySetup.DANE_TA,
        PolicySetup.DANE_STS_TESTING,
        PolicySetup.DANE_ONLY,
    }
)

# What each attack is caught as: (finding kind, TLS-RPT result type) when it is caught.
CAUGHT_AS: dict[Attack, tuple[str, str]] = {
    Attack.STRIP: ("starttls-stripped", "starttls-not-supported"),
    Attack.GARBLE: ("starttls-garbled", "starttls-not-supported"),
    Attack.STARTTLS_454: ("starttls-rejected", "starttls-not-supported"),
    Attack.STARTTLS_501: ("starttls-rejected", "starttls-not-supported"),
    Attack.STARTTLS_BAD_CODE: ("starttls-bad-reply", "starttls-not-supported"),
    Attack.INJECT: ("plaintext-injection", "validation-failure"),
    Attack.EHLO_502: ("ehlo-refused", "starttls-not-supported"),
    Attack.INTERCEPT: ("tls-failure", "certificate-not-trusted"),
    Attack.INTERCEPT_WRONG_NAME: ("tls-failure", "certificate-host-mismatch"),
    Attack.EXPIRED_CERT: ("tls-failure", "certificate-expired"),
}


@dataclass(frozen=True, slots=True)
class Expected:
    """The outcome a scenario must produce."""

    delivered: bool
    tls: bool | None  # None: not delivered, so no TLS question
    finding: str | None
    tlsrpt_result_type: str | None
    bounce: str | None = None  # the status code of an immediate bounce (REQUIRETLS: 5.7.30)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    attack: Attack
    policy: PolicySetup
    expected: Expected
    description: str = ""
    requiretls: bool = False  # sent over STARTTLS with MAIL FROM:<...> REQUIRETLS (RFC 8689)


def _expected(attack: Attack, policy: PolicySetup) -> Expected:
    """The outcome the product promises for `attack` under `policy` (the table the lab checks)."""
    finding, result_type = CAUGHT_AS.get(attack, (None, None))
    tls_attack = attack in (Attack.INTERCEPT, Attack.INTERCEPT_WRONG_NAME, Attack.EXPIRED_CERT)
    if policy is PolicySetup.ENFORCE:
        return Expected(False, None, finding, result_type)
    if policy is PolicySetup.TESTING:
        return Expected(True, tls_attack, finding, result_type)
    if policy is PolicySetup.REMEMBERED:
        # A host that spoke valid TLS before and now does not: a downgrade; on_downgrade=defer.
        return Expected(False, None, "downgrade", result_type)
    # No policy, or mode none: opportunistic TLS, delivered anyway. Garbling, refused or odd
    # STARTTLS replies, a refused EHLO, injection and bad certificates are still reported as
    # findings; a plain missing STARTTLS is what an old non-TLS server looks like, so it is not.
    quiet = {Attack.STRIP}
    if attack in quiet:
        finding = None
    shown = finding
    return Expected(True, tls_attack, shown, None)


def build_scenarios() -> list[Scenario]:
    """Every on-path attack under every policy set-up, plus the set-ups without an attacker."""
    table: list[Scenario] = []
    classic = [p for p in PolicySetup if not p.dane]
    for attack in sorted(_PROXY_ATTACKS, key=list(Attack).index):
        for policy in classic:
            table.append(Scenario(f"{attack}-{policy}", attack, policy, _expected(attack, policy)))
    for policy in classic:
        table.append(
            Scenario(
                f"baseline-{policy}",
                Attack.NONE,
                policy,
                Expected(True, True, None, None),
                "no attacker: delivered over TLS",
            )
        )
    table += [
        Scenario(
            "expired-cert-enforce",
            Attack.EXPIRED_CERT,
            PolicySetup.ENFORCE,
            Expected(False, None, "tls-failure", "certificate-expired"),
            "the MX presents an expired certificate",
        ),
        Scenario(
            "expired-cert-testing",
            Attack.EXPIRED_CERT,
            PolicySetup.TESTING,
            Expected(True, True, "tls-failure", "certificate-expired"),
            "the MX presents an expired certificate",
        ),
        Scenario(
            "spoofed-mx-enforce",
            Attack.SPOOFED_MX,
            PolicySetup.ENFORCE,
            Expected(False, None, None, None),
            "DNS names an MX outside the policy's mx list: never connected to",
        ),
        Scenario(
            "policy-host-blocked-enforce",
            Attack.POLICY_HOST_BLOCKED,
            PolicySetup.ENFORCE,
            Expected(True, True, None, "sts-policy-fetch-error"),
            "policy host unreachable after the policy was cached: the cached policy applies",
        ),
        Scenario(
            "txt-removed-enforce",
            Attack.TXT_REMOVED,
            PolicySetup.ENFORCE,
            Expected(True, True, None, None),
            "_mta-sts TXT removed after caching: the cached policy still applies",
        ),
        Scenario(
            "smuggle-no-policy",
            Attack.SMUGGLE,
            PolicySetup.NO_POLICY,
            Expected(False, None, "smuggling-rejected", None),
            "upstream hides a second message behind <LF>.<LF>: the relay refuses the DATA, "
            "so nothing can be split off downstream",
        ),
    ]
    return table + dane_scenarios() + requiretls_scenarios()


def dane_scenarios() -> list[Scenario]:
    """DANE (RFC 7672) under a real validating resolver: what must come of each attack."""
    deferred = {
        Attack.INTERCEPT: ("tlsa-mismatch", "tlsa-invalid"),
        Attack.STRIP: ("starttls-stripped", "starttls-not-supported"),
        Attack.GARBLE: ("starttls-garbled", "starttls-not-supported"),
    }
    table = [
        Scenario(
            "baseline-dane-ee",
            Attack.NONE,
            PolicySetup.DANE_EE,
            Expected(True, True, None, None),
            "signed TLSA 3 1 1 matches the MX's key: delivered over TLS",
        ),
        Scenario(
            "baseline-dane-ta",
            Attack.NONE,
            PolicySetup.DANE_TA,
            Expected(True, True, None, None),
            "signed TLSA 2 0 1 names the CA the MX's chain leads to: delivered over TLS",
        ),
        Scenario(
            "baseline-dane-ee-sts-testing",
            Attack.NONE,
            PolicySetup.DANE_STS_TESTING,
            Expected(True, True, None, None),
            "DANE and an MTA-STS testing policy: DANE decides (policy-type tlsa)",
        ),
    ]
    for attack, (finding, result_type) in deferred.items():
        table.append(
            Scenario(
                f"{attack}-dane-ee",
                attack,
                PolicySetup.DANE_EE,
                Expected(False, None, finding, result_type),
                "DANE never falls back: deferred",
            )
        )
    table += [
        Scenario(
            "intercept-dane-ee-sts-testing",
            Attack.INTERCEPT,
            PolicySetup.DANE_STS_TESTING,
            Expected(False, None, "tlsa-mismatch", "tlsa-invalid"),
            "testing alone would deliver; the failed DANE check wins (STS-14)",
        ),
        Scenario(
            "dnssec-bogus-dane-ee",
            Attack.DNSSEC_BOGUS,
            PolicySetup.DANE_EE,
            Expected(False, None, None, "dnssec-invalid"),
            "the TLSA answer's signature is forged: bogus, deferred, MX not contacted",
        ),
        Scenario(
            "baseline-dane-only-no-tlsa",
            Attack.NONE,
            PolicySetup.DANE_ONLY,
            Expected(False, None, None, "dane-required"),
            'tls = "dane-only" for a domain without TLSA: deferred',
        ),
    ]
    return table


def requiretls_scenarios() -> list[Scenario]:
    """REQUIRETLS (RFC 8689): delivered only to an authenticated MX that offers it, with the
    parameter; bounced where no MX ever could take it; never in the clear under any attack."""

    def row(attack: Attack, policy: PolicySetup, expected: Expected, why: str) -> Scenario:
        name = (
            f"requiretls-baseline-{policy}"
            if attack is Attack.NONE
            else f"requiretls-{attack}-{policy}"
        )
        return Scenario(name, attack, policy, expected, why, requiretls=True)

    table = [
        row(
            Attack.NONE,
            PolicySetup.ENFORCE,
            Expected(True, True, None, None),
            "enforce, the MX offers REQUIRETLS: delivered, MAIL FROM carries REQUIRETLS",
        ),
        row(
            Attack.NO_REQUIRETLS,
            PolicySetup.ENFORCE,
            Expected(False, None, None, None, bounce="5.7.30"),
            "enforce, valid TLS, but the MX does not offer REQUIRETLS: bounced at once",
        ),
        row(
            Attack.NONE,
            PolicySetup.TESTING,
            Expected(False, None, None, None, bounce="5.7.10"),
            "testing authenticates nothing: bounced, the MX never dialled",
        ),
        row(
            Attack.NONE,
            PolicySetup.NO_POLICY,
            Expected(False, None, None, None, bounce="5.7.10"),
            "no policy: bounced, never sent in plaintext",
        ),
        row(
            Attack.NONE,
            PolicySetup.DANE_EE,
            Expected(True, True, None, None),
            "signed MX and TLSA 3 1 1, the MX offers REQUIRETLS: delivered",
        ),
        row(
            Attack.EXPIRED_CERT,
            PolicySetup.ENFORCE,
            Expected(False, None, "tls-failure", "certificate-expired"),
            "an expired certificate: deferred (4.7.10), never delivered",
        ),
    ]
    for attack in sorted(_PROXY_ATTACKS, key=list(Attack).index):
        finding, result_type = CAUGHT_AS[attack]
        table.append(
            row(
                attack,
                PolicySetup.ENFORCE,
                Expected(False, None, finding, result_type),
                "on-path attack: deferred (4.7.10), never delivered in the clear",
            )
        )
    return table
