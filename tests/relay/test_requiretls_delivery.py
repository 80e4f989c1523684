"""REQUIRETLS delivery (RFC 8689 4.2.1, docs/requiretls.md) against real lab MX hosts on
loopback that do and do not offer REQUIRETLS after STARTTLS, named through the lab DNS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from lab.dns import LabDns
from lab.mx import CertKind, LabMx
from lab.pki import LabCA
from mtasts.model import Mode, PolicyFailure, PolicyResult, PolicySource
from relay.decision import (
    REQUIRETLS_TEMPORARY,
    Action,
    Observation,
    RequireTlsFailure,
    decide,
    requiretls_screen,
    requiretls_verdict,
)
from relay.delivery.deliverer import Deliverer
from relay.delivery.model import DeliveryOutcome
from relay.metrics import Metrics
from relay.queue.bounce import status_of
from relay.tls import client_context
from relay.tls_rules import EffectivePolicy, Requirement
from tests.relay.test_delivery import StubPolicies, make_config, mx_records, request, sts
from tlsrpt_emit.model import MemorySink

StartMx = Callable[..., Awaitable[LabMx]]
MakeDeliverer = Callable[..., Deliverer]


@pytest.fixture
def results() -> MemorySink:
    return MemorySink()


@pytest.fixture
def deliverer_for(
    lab_ca: LabCA, lab_resolver: Any, results: MemorySink, history_store: Any
) -> MakeDeliverer:
    """`deliverer_for(port, policy, config=None)`: a deliverer on the lab DNS and CA."""

    def make(
        port: int, policy: PolicyResult | None = None, config: Any = None, **kwargs: Any
    ) -> Deliverer:
        return Deliverer(
            config or make_config(port),
            resolver=lab_resolver,
            policy_service=StubPolicies(policy),
            history_store=history_store,
            sink=results,
            ssl_context=client_context(str(lab_ca.ca_file)),
            **kwargs,
        )

    return make


async def _deliver(
    deliverer: Deliverer, *, mail_from: str = "alice@sender.test", tls_required_no: bool = False
) -> DeliveryOutcome:
    message = replace(
        request(requiretls=True, tls_required_no=tls_required_no), mail_from=mail_from
    )
    try:
        return await deliverer.deliver(message)
    finally:
        await deliverer.close()


async def _mx(
    start_mx: StartMx, lab_dns: LabDns, *, offers: bool = True, **kwargs: object
) -> LabMx:
    mx = await start_mx("mx1.example.org", "127.0.0.41", **kwargs)
    mx.requiretls = offers
    mx_records(lab_dns, (10, "mx1.example.org"))
    return mx


async def test_rt02_enforce_mx_offering_requiretls_gets_the_parameter(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: MakeDeliverer, results: MemorySink
) -> None:
    mx = await _mx(start_mx, lab_dns)
    outcome = await _deliver(deliverer_for(mx.port, sts(Mode.ENFORCE)))
    [rcpt] = outcome.delivered
    assert rcpt.tls
    [msg] = mx.messages
    assert msg.requiretls
    assert msg.tls
    [result] = results.results
    assert result.success  # TLS-RPT: the session is what it was


async def test_rt03_enforce_mx_without_requiretls_bounces_5_7_30_at_once(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: MakeDeliverer, results: MemorySink
) -> None:
    mx = await _mx(start_mx, lab_dns, offers=False)
    with capture_logs() as logs:
        outcome = await _deliver(deliverer_for(mx.port, sts(Mode.ENFORCE)))
    [rcpt] = outcome.bounced
    assert "5.7.30" in rcpt.reason
    assert rcpt.requiretls == "no-support"
    assert mx.messages == []
    [result] = results.results
    assert result.success  # the TLS session itself was fine
    attempt = next(e for e in logs if e["event"] == "delivery.attempt")
    assert attempt["requiretls"] is True


@pytest.mark.parametrize("mode", [Mode.TESTING, None])
async def test_rt02_testing_or_no_policy_bounces_5_7_10_without_connecting(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer_for: MakeDeliverer,
    results: MemorySink,
    mode: Mode | None,
) -> None:
    mx = await _mx(start_mx, lab_dns)
    policy = sts(mode) if mode is not None else None
    outcome = await _deliver(deliverer_for(mx.port, policy))
    [rcpt] = outcome.bounced
    assert "5.7.10" in rcpt.reason
    assert rcpt.requiretls == "no-auth"
    assert mx.connections == 0  # never dialled, so never in the clear
    assert results.results == []


async def test_rt02_testing_policy_not_listing_the_mx_bounces_too(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: MakeDeliverer
) -> None:
    mx = await _mx(start_mx, lab_dns)
    outcome = await _deliver(deliverer_for(mx.port, sts(Mode.TESTING, "other.example.org")))
    assert "5.7.10" in outcome.bounced[0].reason
    assert mx.connections == 0


async def test_rt02_local_override_does_not_authenticate(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: MakeDeliverer
) -> None:
    mx = await _mx(start_mx, lab_dns)
    config = make_config(mx.port, example_org="verify")
    outcome = await _deliver(deliverer_for(mx.port, None, config=config))
    assert "5.7.10" in outcome.bounced[0].reason
    assert mx.connections == 0


@pytest.mark.parametrize("cert", [CertKind.EXPIRED, CertKind.NONE, CertKind.UNTRUSTED])
async def test_rt03_tls_failure_defers_4_7_10_never_plaintext(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer_for: MakeDeliverer,
    cert: CertKind,
) -> None:
    mx = await _mx(start_mx, lab_dns, cert=cert)
    outcome = await _deliver(deliverer_for(mx.port, sts(Mode.ENFORCE)))
    [rcpt] = outcome.deferred
    assert rcpt.reason.startswith("451 4.7.10 REQUIRETLS: ")
    assert mx.messages == []


async def test_rt04_tls_required_no_has_no_effect(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: MakeDeliverer
) -> None:
    mx = await _mx(start_mx, lab_dns, cert=CertKind.EXPIRED)
    outcome = await _deliver(deliverer_for(mx.port, sts(Mode.ENFORCE)), tls_required_no=True)
    assert outcome.deferred
    assert mx.messages == []


async def test_rt03_next_mx_offering_requiretls_takes_it(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: MakeDeliverer
) -> None:
    first = await start_mx("mx1.example.org", "127.0.0.41")
    second = await start_mx("mx2.example.org", "127.0.0.42", port=first.port)
    second.requiretls = True
    mx_records(lab_dns, (10, "mx1.example.org"), (20, "mx2.example.org"))
    outcome = await _deliver(deliverer_for(first.port, sts(Mode.ENFORCE)))
    assert outcome.delivered
    assert first.messages == []
    assert second.messages[0].requiretls


async def test_policy_fetch_failure_defers_instead_of_bouncing(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: MakeDeliverer
) -> None:
    mx = await _mx(start_mx, lab_dns)
    failed = PolicyResult(
        "example.org",
        None,
        PolicySource.NONE,
        failure=PolicyFailure("sts-webpki-invalid", "policy host unreachable"),
    )
    outcome = await _deliver(deliverer_for(mx.port, failed))
    assert outcome.deferred
    assert "4.7.10" in outcome.deferred[0].reason
    assert mx.connections == 0


async def test_rt05_null_sender_dsn_goes_without_requiretls_rather_than_not_at_all(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: MakeDeliverer
) -> None:
    mx = await _mx(start_mx, lab_dns, offers=False)
    deliverer = deliverer_for(mx.port, sts(Mode.ENFORCE))
    with capture_logs() as logs:
        outcome = await _deliver(deliverer, mail_from="")
    assert outcome.delivered
    [msg] = mx.messages
    assert not msg.requiretls
    assert msg.tls
    assert any(e["event"] == "delivery.requiretls_relaxed" for e in logs)


async def test_pooled_session_without_the_requiretls_check_is_not_reused(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: MakeDeliverer
) -> None:
    """A session opened for ordinary mail never carries a REQUIRETLS message (it was not checked
    for REQUIRETLS after STARTTLS); the counter says what became of each recipient."""
    mx = await _mx(start_mx, lab_dns, offers=False)
    metrics = Metrics()
    deliverer = deliverer_for(mx.port, sts(Mode.ENFORCE), metrics=metrics)
    try:
        plain = await deliverer.deliver(request(1))
        assert plain.delivered
        strict = await deliverer.deliver(request(2, requiretls=True))
    finally:
        await deliverer.close()
    assert "5.7.30" in strict.bounced[0].reason
    assert mx.connections == 2
    assert len(mx.messages) == 1
    bounced = metrics.value("stsguard_requiretls_total", {"outcome": "bounced_no_support"})
    assert bounced == 1
    assert metrics.value("stsguard_requiretls_total", {"outcome": "delivered"}) == 0


# --- the pure rule (relay.decision) ---------------------------------------------------------

NO_AUTH, NO_SUPPORT, TEMPORARY = (
    RequireTlsFailure.NO_AUTH,
    RequireTlsFailure.NO_SUPPORT,
    RequireTlsFailure.TEMPORARY,
)


@pytest.mark.parametrize(
    ("failures", "policy_temporary", "code"),
    [
        ((NO_SUPPORT,), False, "5.7.30"),
        ((NO_AUTH,), False, "5.7.10"),
        ((NO_AUTH, NO_SUPPORT), False, "5.7.30"),
        ((NO_SUPPORT, TEMPORARY), False, None),  # the other MX may come back
        ((NO_AUTH,), True, None),  # the policy may be fetched next time
        ((), False, None),
    ],
)
def test_rt03_verdict_bounces_only_when_retrying_cannot_help(
    failures: tuple[RequireTlsFailure, ...], policy_temporary: bool, code: str | None
) -> None:
    reason = requiretls_verdict("d.test", failures, policy_temporary=policy_temporary)
    assert (reason.split()[1] if reason else None) == code


@pytest.mark.parametrize(
    ("requirement", "mx_secure", "sts_listed", "refused"),
    [
        (Requirement.STS_ENFORCE, False, True, False),
        (Requirement.DANE, True, False, False),
        (Requirement.DANE, False, True, False),  # MX names authenticated by the policy instead
        (Requirement.DANE, False, False, True),  # RFC 8689 4.2.1: unsigned MX RRset
        (Requirement.DANE_UNUSABLE, True, False, True),
        (Requirement.STS_TESTING, True, True, True),
        (Requirement.OPPORTUNISTIC, True, False, True),
        (Requirement.VERIFY, True, False, True),
    ],
)
def test_rt02_screen(
    requirement: Requirement, mx_secure: bool, sts_listed: bool, refused: bool
) -> None:
    policy = EffectivePolicy(requirement, requiretls=True)
    decision = requiretls_screen(policy, "mx.d.test", mx_secure=mx_secure, sts_listed=sts_listed)
    assert (decision is not None) is refused
    plain = replace(policy, requiretls=False)
    assert requiretls_screen(plain, "mx", mx_secure=False, sts_listed=False) is None


def test_rt02_decide_needs_requiretls_after_starttls_and_never_plaintext() -> None:
    policy = EffectivePolicy(Requirement.STS_ENFORCE, requiretls=True)
    clean = Observation(offered_starttls=True, starttls_ok=True, handshake_ok=True, cert_valid=True)
    ok = decide(policy, replace(clean, offered_requiretls=True), last_mx=True)
    assert ok.action is Action.DELIVER_TLS
    lacking = decide(policy, clean, last_mx=False)
    assert (lacking.action, lacking.requiretls) == (Action.NEXT_MX, NO_SUPPORT)
    assert lacking.result_type is None  # TLS-RPT: a successful session
    stripped = decide(policy, Observation(offered_starttls=False), last_mx=True)
    assert (stripped.action, stripped.requiretls) == (Action.DEFER, TEMPORARY)
    unverified = replace(clean, cert_valid=False, offered_requiretls=True)
    assert not decide(policy, unverified, last_mx=True).delivers
    encrypt = replace(policy, requirement=Requirement.ENCRYPT)
    assert not decide(encrypt, clean, last_mx=True).delivers


def test_rt03_a_deferral_that_expires_bounces_as_5_7_10() -> None:
    """A REQUIRETLS deferral says 4.7.10; at queue_lifetime its DSN reports 5.7.10."""
    deferred = REQUIRETLS_TEMPORARY.format(reason="certificate did not validate")
    assert status_of(f"{deferred} (queue lifetime expired)") == "5.7.10"
