"""DANE in the pure delivery decision: precedence over MTA-STS (STS-14), failures, overrides."""

from __future__ import annotations

import pytest

from detect.dane import TlsaRecord
from detect.model import Finding, FindingKind
from mtasts.model import Mode, Policy, PolicyResult, PolicySource
from relay.config import DomainTls
from relay.decision import Action, Observation, dane_for_mx, decide, screen_mx, wants_starttls
from relay.tls_rules import EffectivePolicy, Requirement, TlsaStatus, effective_policy

USABLE = TlsaRecord(3, 1, 1, b"\x01" * 32)
UNUSABLE = TlsaRecord(1, 1, 1, b"\x01" * 32)
TLSA_FINDING = Finding(FindingKind.TLSA_MISMATCH, "no match", "tlsa-invalid", reason_code="x")


def _sts(mode: Mode, mx: tuple[str, ...] = ("mx.other.test",)) -> EffectivePolicy:
    policy = Policy(mode=mode, max_age=86400, mx=mx)
    return effective_policy(PolicyResult("dane.test", policy, PolicySource.FRESH))


@pytest.mark.parametrize(
    ("domain_tls", "status", "records", "want"),
    [
        # (override, TLSA status, records) -> requirement, or the result type of the refusal
        ("mta-sts", "secure", (USABLE,), Requirement.DANE),
        ("mta-sts", "secure", (UNUSABLE,), Requirement.DANE_UNUSABLE),
        ("mta-sts", "secure", (UNUSABLE, USABLE), Requirement.DANE),
        ("mta-sts", "bogus", (), "dnssec-invalid"),
        ("mta-sts", "none", (), Requirement.STS_ENFORCE),
        ("mta-sts", "off", (), Requirement.STS_ENFORCE),
        ("dane", "secure", (USABLE,), Requirement.DANE),
        ("dane", "none", (), Requirement.STS_ENFORCE),
        ("dane", "bogus", (), "dnssec-invalid"),
        ("dane-only", "secure", (USABLE,), Requirement.DANE),
        ("dane-only", "none", (), "dane-required"),
        ("dane-only", "off", (), "dane-required"),
        ("dane-only", "bogus", (), "dnssec-invalid"),
        ("verify", "secure", (USABLE,), Requirement.STS_ENFORCE),  # a local override wins
        ("none", "bogus", (), Requirement.STS_ENFORCE),
    ],
)
def test_dane_precedence_table(
    domain_tls: str, status: str, records: tuple[TlsaRecord, ...], want: object
) -> None:
    base = _sts(Mode.ENFORCE)
    tlsa, override = TlsaStatus(status), DomainTls(domain_tls)
    policy, refusal = dane_for_mx(
        base, tlsa, records, ("mx.dane.test",), domain_tls=override, last_mx=False
    )
    if isinstance(want, Requirement):
        assert refusal is None
        assert policy.requirement is want
    else:
        assert refusal is not None
        assert refusal.result_type == want
        assert refusal.action is Action.NEXT_MX  # try the next MX
    last = dane_for_mx(base, tlsa, records, domain_tls=override, last_mx=True)[1]
    assert (last is None) is isinstance(want, Requirement)
    if last is not None:
        assert last.action is Action.DEFER  # never a bounce, never a fall-back


def test_sts14_dane_replaces_mtasts_for_that_mx() -> None:
    # The MTA-STS policy lists another MX; under DANE it is not consulted (RFC 8461 section 2).
    policy, _ = dane_for_mx(_sts(Mode.ENFORCE), TlsaStatus.SECURE, (USABLE,), last_mx=True)
    assert policy.policy is None
    assert screen_mx(policy, "mx.dane.test") is None
    assert policy.mode == "dane"


def test_sts14_mtasts_never_overrides_a_failed_dane_check() -> None:
    # A testing policy would deliver despite a bad certificate; DANE must not.
    policy, _ = dane_for_mx(_sts(Mode.TESTING), TlsaStatus.SECURE, (USABLE,), last_mx=True)
    obs = Observation(offered_starttls=True, starttls_ok=True, handshake_ok=True, cert_valid=False)
    decision = decide(policy, obs, (TLSA_FINDING,), last_mx=True)
    assert decision.action is Action.DEFER
    assert decision.result_type == "tlsa-invalid"


def test_dane_valid_chain_delivers_over_tls() -> None:
    policy, _ = dane_for_mx(_sts(Mode.TESTING), TlsaStatus.SECURE, (USABLE,), last_mx=True)
    obs = Observation(offered_starttls=True, starttls_ok=True, handshake_ok=True, cert_valid=True)
    decision = decide(policy, obs, last_mx=True)
    assert decision.action is Action.DELIVER_TLS
    assert decision.result_type is None


def test_dane_no_match_tries_the_next_mx() -> None:
    policy, _ = dane_for_mx(_sts(Mode.TESTING), TlsaStatus.SECURE, (USABLE,), last_mx=False)
    obs = Observation(offered_starttls=True, starttls_ok=True, handshake_ok=True, cert_valid=False)
    assert decide(policy, obs, (TLSA_FINDING,), last_mx=False).action is Action.NEXT_MX


@pytest.mark.parametrize(
    "finding",
    [
        Finding(FindingKind.STARTTLS_STRIPPED, "250 no starttls"),
        Finding(FindingKind.STARTTLS_GARBLED, "XXXXXXXA"),
        Finding(FindingKind.PLAINTEXT_INJECTION, "junk", "validation-failure"),
    ],
)
def test_dane_findings_apply_unchanged(finding: Finding) -> None:
    policy, _ = dane_for_mx(
        EffectivePolicy(Requirement.OPPORTUNISTIC), TlsaStatus.SECURE, (USABLE,), last_mx=True
    )
    assert policy.strict
    obs = Observation(offered_starttls=False)
    decision = decide(policy, obs, (finding,), last_mx=True)
    assert decision.action is Action.DEFER  # never plaintext under DANE
    assert decision.result_type == finding.result_type


def test_dane_all_records_unusable_still_requires_tls() -> None:
    policy, _ = dane_for_mx(
        EffectivePolicy(Requirement.OPPORTUNISTIC), TlsaStatus.SECURE, (UNUSABLE,), last_mx=True
    )
    no_tls = decide(policy, Observation(offered_starttls=False), last_mx=True)
    assert no_tls.action is Action.DEFER
    unverified = Observation(
        offered_starttls=True, starttls_ok=True, handshake_ok=True, cert_valid=False
    )
    assert decide(policy, unverified, last_mx=True).action is Action.DELIVER_TLS
    assert wants_starttls(policy, Observation(offered_starttls=True))


def test_dane_tls_required_no_ignores_dane() -> None:
    # RFC 8689: `TLS-Required: No` (and our own report mail, RPT-10) ignore DANE too.
    base = effective_policy(None, tls_required_no=True)
    policy, refusal = dane_for_mx(
        base, TlsaStatus.BOGUS, domain_tls=DomainTls.DANE_ONLY, last_mx=True
    )
    assert refusal is None
    assert policy == base


def test_dane_override_values_are_accepted() -> None:
    from relay.config import config_from_dict

    config = config_from_dict(
        {"domains": {"a.test": {"tls": "dane"}, "b.test": {"tls": "dane-only"}}}
    )
    assert config.domain_tls("a.test") == "dane"
    assert config.domain_tls("b.test") == "dane-only"
    # `dane` looks MTA-STS up as without an override; `dane-only` needs nothing but DANE.
    assert effective_policy(None, domain_tls="dane").requirement is Requirement.OPPORTUNISTIC
    assert effective_policy(None, domain_tls="dane-only").requirement is Requirement.VERIFY
