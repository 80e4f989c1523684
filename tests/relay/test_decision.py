"""Table tests of the pure delivery decision (STS-11, STS-12, STS-13, TLS-07)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detect.model import Finding, FindingKind
from mtasts.model import Mode, Policy, PolicyFailure, PolicyResult, PolicySource
from relay.connection_plan import may_retry_unverified
from relay.decision import (
    Action,
    Decision,
    Observation,
    decide,
    decide_expiry,
    mx_matches,
    screen_mx,
    wants_starttls,
)
from relay.tls_rules import EffectivePolicy, Requirement, effective_policy

MX = ("mx1.example.org", "*.backup.example.org")


def sts(mode: Mode) -> PolicyResult:
    text = f"version: STSv1\nmode: {mode}\nmx: {MX[0]}\nmx: {MX[1]}\nmax_age: 86400\n"
    policy = Policy(mode, 86400, MX, text)
    return PolicyResult("example.org", policy, PolicySource.FRESH)


NO_POLICY = PolicyResult("example.org", None, PolicySource.NONE)
ENFORCE = effective_policy(sts(Mode.ENFORCE))
TESTING = effective_policy(sts(Mode.TESTING))
OPPORTUNISTIC = effective_policy(NO_POLICY)
ENCRYPT = effective_policy(NO_POLICY, no_policy_tls="encrypt")
VERIFY = effective_policy(NO_POLICY, domain_tls="verify")
NO_TLS = effective_policy(sts(Mode.ENFORCE), domain_tls="none")
ENFORCE_TLS_REQUIRED_NO = effective_policy(sts(Mode.ENFORCE), tls_required_no=True)
LOG_DOWNGRADE = effective_policy(NO_POLICY, on_downgrade="log")

# What a session reached.
VALID_TLS = Observation(offered_starttls=True, starttls_ok=True, handshake_ok=True, cert_valid=True)
NO_STARTTLS = Observation(offered_starttls=False)
EHLO_REFUSED = Observation(ehlo_ok=False)
STARTTLS_454 = Observation(offered_starttls=True, starttls_ok=False)
BAD_CERT = Observation(
    offered_starttls=True,
    starttls_ok=True,
    handshake_ok=False,
    cert_valid=False,
    tls_result_type="certificate-expired",
    reason_code="X509_V_ERR_10",
)
UNVERIFIED_TLS = Observation(
    offered_starttls=True,
    starttls_ok=True,
    handshake_ok=True,
    cert_valid=False,
    tls_result_type="certificate-host-mismatch",
)
HANDSHAKE_FAILED = Observation(offered_starttls=True, starttls_ok=True, handshake_ok=False)

STRIPPED = Finding(FindingKind.STARTTLS_STRIPPED, "250 8BITMIME", "starttls-not-supported")
INJECTED = Finding(FindingKind.PLAINTEXT_INJECTION, "250 evil", "validation-failure")
GARBLED = Finding(FindingKind.STARTTLS_GARBLED, "250 STARTTLX", "starttls-not-supported")
DOWNGRADE = Finding(FindingKind.DOWNGRADE, "offered STARTTLS 2 days ago", "starttls-not-supported")


def test_effective_policy_sources() -> None:
    assert ENFORCE.requirement is Requirement.STS_ENFORCE
    assert TESTING.requirement is Requirement.STS_TESTING
    assert OPPORTUNISTIC.requirement is Requirement.OPPORTUNISTIC
    assert ENCRYPT.requirement is Requirement.ENCRYPT
    # a local override wins over MTA-STS
    assert VERIFY.requirement is Requirement.VERIFY
    assert VERIFY.policy is None
    assert NO_TLS.requirement is Requirement.NONE
    # ... which keeps the published policy only to report under it (RFC 8460 4.3)
    assert NO_TLS.policy is None
    assert NO_TLS.published is not None
    assert effective_policy(sts(Mode.NONE), domain_tls="none").published is None
    # mode none is no policy (RFC 8461 section 5)
    assert effective_policy(sts(Mode.NONE)).requirement is Requirement.OPPORTUNISTIC
    assert effective_policy(None, no_policy_tls="verify").requirement is Requirement.VERIFY
    # a fetch failure without a policy is no policy
    failed = PolicyResult(
        "example.org", None, PolicySource.NONE, failure=PolicyFailure("sts-policy-fetch-error", "x")
    )
    assert effective_policy(failed).requirement is Requirement.OPPORTUNISTIC
    assert ENFORCE.mode == "enforce"
    assert OPPORTUNISTIC.mode == "opportunistic"


@pytest.mark.parametrize(
    ("policy", "host", "skipped"),
    [
        (ENFORCE, "mx1.example.org", False),
        (ENFORCE, "MX1.Example.Org.", False),
        (ENFORCE, "a.backup.example.org", False),
        (ENFORCE, "evil.example.net", True),
        (ENFORCE, "a.b.backup.example.org", True),
        (TESTING, "evil.example.net", False),
        (ENFORCE_TLS_REQUIRED_NO, "evil.example.net", False),
        (OPPORTUNISTIC, "evil.example.net", False),
        (VERIFY, "evil.example.net", False),
    ],
)
def test_sts11_enforce_never_uses_an_mx_outside_the_policy(
    policy: EffectivePolicy, host: str, skipped: bool
) -> None:
    verdict = screen_mx(policy, host)
    if skipped:
        assert verdict is not None
        assert verdict.action is Action.NEXT_MX
        assert verdict.result_type is None  # never connected: no session to report
    else:
        assert verdict is None


def test_sts11_testing_delivers_to_unlisted_mx_and_reports() -> None:
    obs = replace(VALID_TLS, mx_matches=mx_matches(TESTING, "evil.net"))
    verdict = decide(TESTING, obs, last_mx=True)
    assert verdict.action is Action.DELIVER_TLS
    assert verdict.result_type == "validation-failure"


# (policy, observation, findings, last_mx) -> (action, result type)
TABLE: list[
    tuple[str, EffectivePolicy, Observation, tuple[Finding, ...], bool, Action, str | None]
] = [
    # a clean TLS session delivers under every policy
    ("enforce-valid", ENFORCE, VALID_TLS, (), True, Action.DELIVER_TLS, None),
    ("testing-valid", TESTING, VALID_TLS, (), True, Action.DELIVER_TLS, None),
    ("opportunistic-valid", OPPORTUNISTIC, VALID_TLS, (), True, Action.DELIVER_TLS, None),
    ("verify-valid", VERIFY, VALID_TLS, (), True, Action.DELIVER_TLS, None),
    # enforce: missing STARTTLS is a temporary failure, next MX first (STS-11, STS-13)
    (
        "enforce-nostarttls-more",
        ENFORCE,
        NO_STARTTLS,
        (),
        False,
        Action.NEXT_MX,
        "starttls-not-supported",
    ),
    (
        "enforce-nostarttls-last",
        ENFORCE,
        NO_STARTTLS,
        (),
        True,
        Action.DEFER,
        "starttls-not-supported",
    ),
    (
        "enforce-stripped",
        ENFORCE,
        NO_STARTTLS,
        (STRIPPED,),
        True,
        Action.DEFER,
        "starttls-not-supported",
    ),
    ("enforce-bad-cert", ENFORCE, BAD_CERT, (), True, Action.DEFER, "certificate-expired"),
    ("enforce-bad-cert-more", ENFORCE, BAD_CERT, (), False, Action.NEXT_MX, "certificate-expired"),
    (
        "enforce-unverified",
        ENFORCE,
        UNVERIFIED_TLS,
        (),
        True,
        Action.DEFER,
        "certificate-host-mismatch",
    ),
    (
        "enforce-injection",
        ENFORCE,
        STARTTLS_454,
        (INJECTED,),
        True,
        Action.DEFER,
        "validation-failure",
    ),
    ("enforce-handshake", ENFORCE, HANDSHAKE_FAILED, (), True, Action.DEFER, "validation-failure"),
    # testing: deliver anyway and report the failure
    (
        "testing-nostarttls",
        TESTING,
        NO_STARTTLS,
        (STRIPPED,),
        True,
        Action.DELIVER_PLAINTEXT,
        "starttls-not-supported",
    ),
    (
        "testing-unverified",
        TESTING,
        UNVERIFIED_TLS,
        (),
        True,
        Action.DELIVER_TLS,
        "certificate-host-mismatch",
    ),
    (
        "testing-bad-cert",
        TESTING,
        BAD_CERT,
        (),
        True,
        Action.DELIVER_PLAINTEXT,
        "certificate-expired",
    ),
    (
        "testing-injection",
        TESTING,
        STARTTLS_454,
        (INJECTED,),
        True,
        Action.DELIVER_PLAINTEXT,
        "validation-failure",
    ),
    # TLS-Required: No turns enforce failures into reported deliveries
    (
        "tlsreqno-nostarttls",
        ENFORCE_TLS_REQUIRED_NO,
        NO_STARTTLS,
        (),
        True,
        Action.DELIVER_PLAINTEXT,
        "starttls-not-supported",
    ),
    # no policy: opportunistic, nothing reported
    ("opp-nostarttls", OPPORTUNISTIC, NO_STARTTLS, (), True, Action.DELIVER_PLAINTEXT, None),
    ("opp-unverified", OPPORTUNISTIC, UNVERIFIED_TLS, (), True, Action.DELIVER_TLS, None),
    ("opp-ehlo-refused", OPPORTUNISTIC, EHLO_REFUSED, (), True, Action.DELIVER_PLAINTEXT, None),
    # remembered TLS: a downgrade defers (on_downgrade = defer) or only logs
    (
        "opp-downgrade",
        OPPORTUNISTIC,
        NO_STARTTLS,
        (STRIPPED, DOWNGRADE),
        True,
        Action.DEFER,
        "starttls-not-supported",
    ),
    (
        "opp-downgrade-more",
        OPPORTUNISTIC,
        BAD_CERT,
        (DOWNGRADE,),
        False,
        Action.NEXT_MX,
        "certificate-expired",
    ),
    (
        "opp-downgrade-log",
        LOG_DOWNGRADE,
        NO_STARTTLS,
        (DOWNGRADE,),
        True,
        Action.DELIVER_PLAINTEXT,
        None,
    ),
    # local encrypt / verify
    ("encrypt-unverified", ENCRYPT, UNVERIFIED_TLS, (), True, Action.DELIVER_TLS, None),
    ("encrypt-nostarttls", ENCRYPT, NO_STARTTLS, (), True, Action.DEFER, "starttls-not-supported"),
    (
        "verify-unverified",
        VERIFY,
        UNVERIFIED_TLS,
        (),
        True,
        Action.DEFER,
        "certificate-host-mismatch",
    ),
    # local none: plaintext even when TLS is offered; the domain publishes an enforce policy,
    # so the session failed it and is reported so (RFC 8460 4.3), never as a success
    (
        "none-offered",
        NO_TLS,
        Observation(offered_starttls=True),
        (),
        True,
        Action.DELIVER_PLAINTEXT,
        "validation-failure",
    ),
    (
        "none-garbled",
        NO_TLS,
        Observation(offered_starttls=False),
        (GARBLED,),
        True,
        Action.DELIVER_PLAINTEXT,
        "starttls-not-supported",
    ),
    (
        "none-stripped",
        NO_TLS,
        Observation(offered_starttls=False),
        (STRIPPED,),
        True,
        Action.DELIVER_PLAINTEXT,
        "starttls-not-supported",
    ),
    # ... and without a published policy there is nothing to report
    (
        "none-no-policy",
        effective_policy(NO_POLICY, domain_tls="none"),
        Observation(offered_starttls=True),
        (),
        True,
        Action.DELIVER_PLAINTEXT,
        None,
    ),
    # encrypt under a published policy: delivered over unverified TLS, reported as failed
    (
        "encrypt-over-published-policy",
        effective_policy(sts(Mode.ENFORCE), domain_tls="encrypt"),
        UNVERIFIED_TLS,
        (),
        True,
        Action.DELIVER_TLS,
        "certificate-host-mismatch",
    ),
]


@pytest.mark.parametrize(
    ("policy", "obs", "findings", "last_mx", "action", "result_type"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_decision_table(
    policy: EffectivePolicy,
    obs: Observation,
    findings: tuple[Finding, ...],
    last_mx: bool,
    action: Action,
    result_type: str | None,
) -> None:
    verdict = decide(policy, obs, findings, last_mx=last_mx)
    assert (verdict.action, verdict.result_type) == (action, result_type)
    assert verdict.reason


@pytest.mark.parametrize("policy", [ENFORCE, ENCRYPT, VERIFY])
@pytest.mark.parametrize(
    "obs", [NO_STARTTLS, EHLO_REFUSED, STARTTLS_454, BAD_CERT, HANDSHAKE_FAILED]
)
@pytest.mark.parametrize("last_mx", [True, False])
def test_tls07_strict_never_plaintext_never_helo_never_bounce(
    policy: EffectivePolicy, obs: Observation, last_mx: bool
) -> None:
    verdict = decide(policy, obs, (STRIPPED,), last_mx=last_mx)
    assert verdict.action is (Action.DEFER if last_mx else Action.NEXT_MX)
    assert verdict.result_type is not None


def test_tls07_ehlo_refused_under_enforce_is_starttls_not_supported() -> None:
    verdict = decide(ENFORCE, EHLO_REFUSED, last_mx=True)
    assert verdict == Decision(Action.DEFER, "starttls-not-supported", verdict.reason)
    assert "HELO" in verdict.reason


def test_sts13_failing_primary_moves_on_to_the_backup() -> None:
    primary = decide(ENFORCE, BAD_CERT, last_mx=False)
    assert primary.action is Action.NEXT_MX
    backup = decide(ENFORCE, VALID_TLS, last_mx=True)
    assert backup.action is Action.DELIVER_TLS


def test_sts13_reason_code_is_kept_for_tlsrpt() -> None:
    assert decide(ENFORCE, BAD_CERT, last_mx=True).reason_code == "X509_V_ERR_10"


@pytest.mark.parametrize(
    ("tls_failure", "failed_id", "live_id", "action"),
    [
        (True, "20240101", "20240202", Action.DEFER),  # new policy: try again with it
        (True, "20240101", "20240101", Action.BOUNCE),  # same policy: fail for good
        (True, "20240101", None, Action.BOUNCE),  # record gone
        (False, "20240101", "20240202", Action.BOUNCE),  # not an MTA-STS failure
        (True, None, "1", Action.DEFER),
    ],
)
def test_sts12_recheck_txt_id_before_bounce(
    tls_failure: bool, failed_id: str | None, live_id: str | None, action: Action
) -> None:
    verdict = decide_expiry(
        tls_failure=tls_failure, failed_policy_id=failed_id, live_policy_id=live_id
    )
    assert verdict.action is action


def test_sts12_enforce_failures_are_temporary() -> None:
    for obs in (NO_STARTTLS, BAD_CERT, HANDSHAKE_FAILED, UNVERIFIED_TLS, EHLO_REFUSED):
        assert decide(ENFORCE, obs, last_mx=True).action is Action.DEFER


def test_wants_starttls() -> None:
    assert wants_starttls(ENFORCE, Observation(offered_starttls=True))
    assert wants_starttls(OPPORTUNISTIC, Observation(offered_starttls=True))
    assert not wants_starttls(NO_TLS, Observation(offered_starttls=True))
    assert not wants_starttls(ENFORCE, NO_STARTTLS)
    assert not wants_starttls(ENFORCE, EHLO_REFUSED)


def test_may_retry_unverified() -> None:
    assert may_retry_unverified(TESTING)
    assert may_retry_unverified(OPPORTUNISTIC)
    assert may_retry_unverified(ENCRYPT)
    assert may_retry_unverified(ENFORCE_TLS_REQUIRED_NO)
    assert not may_retry_unverified(ENFORCE)
    assert not may_retry_unverified(VERIFY)
    assert not may_retry_unverified(NO_TLS)


observations = st.builds(
    Observation,
    ehlo_ok=st.booleans(),
    offered_starttls=st.booleans(),
    starttls_ok=st.none() | st.booleans(),
    handshake_ok=st.none() | st.booleans(),
    cert_valid=st.none() | st.booleans(),
    tls_result_type=st.none() | st.sampled_from(["certificate-expired", "validation-failure"]),
    mx_matches=st.booleans(),
)
findings_lists = st.lists(
    st.sampled_from([STRIPPED, INJECTED, DOWNGRADE]), max_size=3, unique=True
).map(tuple)
all_policies = st.sampled_from(
    [ENFORCE, TESTING, OPPORTUNISTIC, ENCRYPT, VERIFY, NO_TLS, ENFORCE_TLS_REQUIRED_NO]
)


@settings(max_examples=200)
@given(all_policies, observations, findings_lists, st.booleans())
def test_tls07_property_never_plaintext_or_bounce_when_strict(
    policy: EffectivePolicy, obs: Observation, findings: tuple[Finding, ...], last_mx: bool
) -> None:
    verdict = decide(policy, obs, findings, last_mx=last_mx)
    assert verdict.action is not Action.BOUNCE  # TLS problems never bounce (STS-12)
    if not last_mx:
        assert verdict.action is not Action.DEFER
    if policy.strict:
        assert verdict.action is not Action.DELIVER_PLAINTEXT
        if not obs.mx_matches:
            assert not verdict.delivers
        if verdict.action is Action.DELIVER_TLS:
            assert obs.handshake_ok is True
            if policy.needs_valid_cert:
                assert obs.cert_valid is True
    if verdict.action in (Action.DEFER, Action.NEXT_MX) and obs.mx_matches:
        assert verdict.result_type is not None


def test_masked_reply_evidence_does_not_hide_the_certificate_failure() -> None:
    masked = Finding(FindingKind.MASKED_REPLY, "220 ****************", "starttls-not-supported")
    tls = Finding(FindingKind.TLS_FAILURE, "certificate has expired", "certificate-expired")
    verdict = decide(ENFORCE, BAD_CERT, (masked, tls), last_mx=True)
    assert verdict.action is Action.DEFER
    assert verdict.result_type == "certificate-expired"
    assert decide(ENFORCE, BAD_CERT, (masked,), last_mx=True).result_type == "certificate-expired"
