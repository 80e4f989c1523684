"""The lab's scenario table: each attack under each policy set-up, with its expected outcome.

A scenario names the recipient domain's set-up (policy mode, or no policy, or no policy but a host
that spoke TLS before), what the attacker or the set-up does, and what must come out: delivered or
not, over TLS or not, the finding kind, and the TLS-RPT result type of the session.
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


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    attack: Attack
    policy: PolicySetup
    expected: Expected
    description: str = ""


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
    for attack in sorted(_PROXY_ATTACKS, key=list(Attack).index):
        for policy in PolicySetup:
            table.append(Scenario(f"{attack}-{policy}", attack, policy, _expected(attack, policy)))
    for policy in PolicySetup:
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
    return table
