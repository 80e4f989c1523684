"""The wire rules of negotiation as a table: a scripted MX (`tests/relay/fake_mx.py`) under each
policy kind, through the real `Negotiator`, `relay.decision` and `detect` judges; no sockets.
The loopback tests (`test_delivery.py`, `test_tls_edges.py`) keep the real wire."""

from __future__ import annotations

import time
from typing import Any

import dns.asyncresolver
import pytest

from detect.dane import TlsaRecord
from detect.history import MemoryTlsHistoryStore
from lab.dns import LabDns
from mtasts.model import Mode, Policy, PolicyResult, PolicySource
from relay.config import Config, DetectConfig, DomainConfig, DomainTls
from relay.delivery.dane_lookup import TlsaLookup
from relay.delivery.deliverer import Deliverer, DeliveryRequest
from relay.delivery.negotiate import Attempt, Negotiator
from relay.delivery.policy import HostFacts, MxPlan, destination, plan_host
from relay.errors import SessionError
from relay.message_flags import MessageFlags
from relay.tls import client_context
from relay.tls_rules import TlsaStatus
from tests.relay.fake_mx import EXPIRED, HANDSHAKE_FAILED, UNTRUSTED, FakeMx, Script
from tlsrpt_emit.model import MemorySink, PolicyType

DOMAIN = "example.org"
HOST = "mx.example.org"
NOW = time.time()

NO_STARTTLS = Script(ehlo=(250, "mx.example.org\nPIPELINING"))
GARBLED = Script(ehlo=(250, "mx.example.org\nPIPELINING\nXXXXXXXA"))
REFUSED_454 = Script(starttls=(454, "4.7.0 TLS not available"))
INJECTED = Script(after_220=b"250 injected\r\n")
EHLO_502 = Script(ehlo=(502, "5.5.2 command not recognised"))


def _sts(mode: Mode) -> PolicyResult:
    text = f"version: STSv1\nmode: {mode}\nmx: {HOST}\nmax_age: 86400\n"
    return PolicyResult(DOMAIN, Policy(mode, 86400, (HOST,), text), PolicySource.FRESH)


def plan(kind: str, *, last_mx: bool = True) -> MxPlan:
    """The plan for HOST under a policy kind of the table."""
    override = {"encrypt": "encrypt", "none": "none", "verify": "verify"}.get(kind, "mta-sts")
    config = Config(
        detect=DetectConfig(on_downgrade="defer"),
        domains={DOMAIN: DomainConfig(tls=DomainTls(override))},
    )
    sts = {"enforce": _sts(Mode.ENFORCE), "testing": _sts(Mode.TESTING)}.get(kind)
    tlsa = None
    if kind == "dane":
        tlsa = TlsaLookup(TlsaStatus.SECURE, (TlsaRecord(3, 1, 1, b"\x01" * 32),), HOST, (HOST,))
    if kind == "dane-unusable":
        tlsa = TlsaLookup(TlsaStatus.SECURE, (TlsaRecord(1, 1, 1, b"\x01" * 32),), HOST)
    dest = destination(DOMAIN, config, sts=sts)
    return plan_host(dest, HostFacts(HOST, tlsa), last_mx=last_mx, now=NOW)


async def negotiate(
    kind: str, *scripts: Script, remembered: bool = False, last_mx: bool = True
) -> tuple[Attempt, FakeMx]:
    history = MemoryTlsHistoryStore()
    if remembered:  # the host offered STARTTLS with a valid certificate yesterday
        history.record(HOST, offered_starttls=True, valid_cert=True, now=NOW - 86400)
    mx = FakeMx(*scripts)
    p = plan(kind, last_mx=last_mx)
    negotiator = Negotiator(
        Config(detect=DetectConfig(on_downgrade="defer")),
        ssl_context=client_context(""),
        history=history,
        clock=lambda: NOW,
        session_factory=mx,
    )
    return await negotiator.attempt(p, "192.0.2.25"), mx


ROWS: list[tuple[str, str, tuple[Script, ...], dict[str, Any]]] = [
    # (rule, policy kind, one script per connection, what comes out)
    ("clean TLS", "enforce", (Script(),), {"action": "deliver-tls", "session": "tls"}),
    ("clean TLS", "none-policy", (Script(),), {"action": "deliver-tls", "session": "tls"}),
    # STARTTLS absent: stripped where a policy or remembered TLS expects it (TLS-07: no plaintext)
    ("absent", "enforce", (NO_STARTTLS,), {"action": "defer", "rt": "starttls-not-supported",
     "findings": ["starttls-stripped"], "session": None}),
    ("absent", "testing", (NO_STARTTLS,), {"action": "deliver-plaintext",
     "rt": "starttls-not-supported", "findings": ["starttls-stripped"], "session": "plain"}),
    ("absent", "none-policy", (NO_STARTTLS,), {"action": "deliver-plaintext", "session": "plain"}),
    ("absent, remembered", "none-policy-remembered", (NO_STARTTLS,), {"action": "defer",
     "rt": "starttls-not-supported", "findings": ["starttls-stripped", "downgrade"]}),
    ("absent", "dane", (NO_STARTTLS,), {"action": "defer", "rt": "starttls-not-supported",
     "findings": ["starttls-stripped"]}),
    ("absent", "encrypt", (NO_STARTTLS,), {"action": "defer", "rt": "starttls-not-supported"}),
    # STARTTLS garbled by a middlebox
    ("garbled", "enforce", (GARBLED,), {"action": "defer", "rt": "starttls-not-supported",
     "findings": ["starttls-garbled"]}),
    ("garbled", "none-policy", (GARBLED,), {"action": "deliver-plaintext",
     "findings": ["starttls-garbled"], "session": "plain"}),
    # STARTTLS refused: RFC 3207, the plaintext session goes on when the policy allows it
    ("refused 454", "enforce", (REFUSED_454,), {"action": "defer",
     "rt": "starttls-not-supported", "findings": ["starttls-rejected"]}),
    ("refused 454", "testing", (REFUSED_454,), {"action": "deliver-plaintext",
     "rt": "starttls-not-supported", "session": "plain", "connections": 1}),
    # Bytes after the 220 (TLS-04): abort; plaintext only on a new connection
    ("injection", "enforce", (INJECTED,), {"action": "defer", "rt": "validation-failure",
     "findings": ["plaintext-injection"], "connections": 1}),
    ("injection", "testing", (INJECTED,), {"action": "deliver-plaintext",
     "rt": "validation-failure", "session": "plain", "connections": 2}),
    # EHLO refused: no HELO fall-back under a strict policy (TLS-07)
    ("EHLO 502", "enforce", (EHLO_502,), {"action": "defer", "findings": ["ehlo-refused"],
     "rt": "starttls-not-supported", "helo": False}),
    ("EHLO 502", "none-policy", (EHLO_502,), {"action": "deliver-plaintext", "helo": True,
     "session": "plain"}),
    # Handshake and certificate failures under each policy kind
    ("expired", "enforce", (Script(tls=EXPIRED),), {"action": "defer",
     "rt": "certificate-expired", "findings": ["tls-failure"], "connections": 1}),
    ("expired", "testing", (Script(tls=EXPIRED), Script()), {"action": "deliver-tls",
     "rt": "certificate-expired", "session": "tls", "connections": 2}),
    ("untrusted", "none-policy", (Script(tls=UNTRUSTED), Script()), {"action": "deliver-tls",
     "session": "tls", "connections": 2}),
    ("untrusted", "encrypt", (Script(tls=UNTRUSTED), Script()), {"action": "deliver-tls",
     "session": "tls", "connections": 2}),
    ("untrusted", "verify", (Script(tls=UNTRUSTED),), {"action": "defer",
     "rt": "certificate-not-trusted", "connections": 1}),
    ("handshake", "enforce", (Script(tls=HANDSHAKE_FAILED),), {"action": "defer",
     "rt": "validation-failure", "connections": 1}),
    ("handshake", "testing", (Script(tls=HANDSHAKE_FAILED),), {"action": "deliver-plaintext",
     "rt": "validation-failure", "session": "plain", "connections": 2}),
    ("TLSA mismatch", "dane", (Script(),), {"action": "defer", "rt": "tlsa-invalid",
     "findings": ["tlsa-mismatch"], "connections": 1}),
    ("no usable TLSA", "dane-unusable", (Script(tls=HANDSHAKE_FAILED),), {"action": "defer",
     "rt": "validation-failure", "connections": 1}),
    ("no usable TLSA", "dane-unusable", (Script(),), {"action": "deliver-tls", "session": "tls"}),
    # A local override that forbids TLS never sends STARTTLS
    ("tls = none", "none", (Script(),), {"action": "deliver-plaintext", "session": "plain",
     "starttls": False}),
    # The retry connection breaks: the TLS failure already seen is still the result
    ("retry refused", "testing", (Script(tls=EXPIRED), Script(drop="connect")), {
     "action": "defer", "rt": "certificate-expired", "session": None, "connections": 2}),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "kind", "scripts", "want"), ROWS)
async def test_wire_rule(
    rule: str, kind: str, scripts: tuple[Script, ...], want: dict[str, Any]
) -> None:
    policy = kind.removesuffix("-remembered")
    attempt, mx = await negotiate(policy, *scripts, remembered=kind.endswith("-remembered"))
    decision = attempt.decision
    assert str(decision.action) == want["action"], (rule, decision.reason)
    assert decision.result_type == want.get("rt"), (rule, decision.reason)
    if "findings" in want:
        assert [str(f.kind) for f in attempt.findings] == want["findings"], rule
    session = attempt.session
    if "session" in want:
        shown = None if session is None else ("tls" if session.tls else "plain")
        assert shown == want["session"], rule
    if "connections" in want:
        assert len(mx.sessions) == want["connections"], (rule, mx.steps)
    if "helo" in want:
        assert ("helo" in mx.steps[0]) is want["helo"], (rule, mx.steps)
    if "starttls" in want:
        assert ("starttls" in mx.steps[0]) is want["starttls"], (rule, mx.steps)
    if session is None:  # nothing left open when the attempt gives up
        assert not any(s.connected for s in mx.sessions), (rule, mx.steps)


async def test_next_mx_when_hosts_are_left() -> None:
    attempt, _ = await negotiate("enforce", NO_STARTTLS, last_mx=False)
    assert str(attempt.decision.action) == "next-mx"


@pytest.mark.parametrize("drop", ["connect", "ehlo", "starttls", "ehlo_tls"])
async def test_a_peer_that_goes_away_is_a_session_error(drop: str) -> None:
    with pytest.raises(SessionError):
        await negotiate("enforce", Script(drop=drop))


async def test_ehlo_refused_after_tls_is_a_session_error() -> None:
    with pytest.raises(SessionError, match="EHLO after STARTTLS refused"):
        await negotiate("enforce", Script(ehlo_tls=(554, "no")))


async def test_the_unverified_retry_uses_another_context() -> None:
    _, mx = await negotiate("testing", Script(tls=EXPIRED), Script())
    first, second = (s.contexts[0] for s in mx.sessions)
    assert first.verify_mode.name == "CERT_REQUIRED"
    assert second.verify_mode.name == "CERT_NONE"


class OnePolicy:
    """The policy service: always the enforce policy for HOST."""

    async def get(self, domain: str) -> PolicyResult:
        return _sts(Mode.ENFORCE)


def _request(n: int, **flags: bool) -> DeliveryRequest:
    body = f"Subject: {n}\r\n\r\nhello\r\n".encode()
    rcpts = (f"bob@{DOMAIN}",)
    return DeliveryRequest(f"q{n}", "alice@sender.test", rcpts, body, MessageFlags(**flags))


async def test_reuse_only_under_the_same_policy(
    lab_dns: LabDns, lab_resolver: dns.asyncresolver.Resolver
) -> None:
    lab_dns.add(DOMAIN, "MX", f"10 {HOST}.")
    lab_dns.add(HOST, "A", "127.0.0.99")  # never dialled: the scripted MX answers
    mx = FakeMx()
    deliverer = Deliverer(
        Config(),
        resolver=lab_resolver,
        policy_service=OnePolicy(),
        history_store=MemoryTlsHistoryStore(),
        sink=MemorySink(),
        ssl_context=client_context(""),
        session_factory=mx,
    )
    first = await deliverer.deliver(_request(1))
    second = await deliverer.deliver(_request(2))
    assert [len(o.delivered) for o in (first, second)] == [1, 1]
    assert len(mx.sessions) == 1  # the second message rode the parked session
    assert mx.steps[0].count("rset") == 1
    # `TLS-Required: No` is another policy: the parked session is not taken for it.
    third = await deliverer.deliver(_request(3, tls_required_no=True))
    assert len(third.delivered) == 1
    assert len(mx.sessions) == 2
    await deliverer.close()
    assert all("quit" in steps for steps in mx.steps)


@pytest.mark.parametrize(
    ("script", "result_type", "code"),
    [
        (GARBLED, "starttls-not-supported", ""),  # the attack the domain owner must see
        (Script(), "validation-failure", "tls-disabled-locally"),  # only our own choice
    ],
)
async def test_override_none_reports_under_the_published_policy(
    lab_dns: LabDns,
    lab_resolver: dns.asyncresolver.Resolver,
    script: Script,
    result_type: str,
    code: str,
) -> None:
    """Issue 20 item 9: `tls = "none"` for an enforce domain delivers in plaintext as told, and
    reports the session under the domain's MTA-STS policy with its failure (RFC 8460 4.3),
    not as a no-policy-found success."""
    lab_dns.add(DOMAIN, "MX", f"10 {HOST}.")
    lab_dns.add(HOST, "A", "127.0.0.99")  # never dialled: the scripted MX answers
    sink = MemorySink()
    mx = FakeMx(script)
    deliverer = Deliverer(
        Config(domains={DOMAIN: DomainConfig(tls=DomainTls.NONE)}),
        resolver=lab_resolver,
        policy_service=OnePolicy(),
        history_store=MemoryTlsHistoryStore(),
        sink=sink,
        ssl_context=client_context(""),
        session_factory=mx,
    )
    outcome = await deliverer.deliver(_request(1))
    await deliverer.close()
    [rcpt] = outcome.delivered
    assert not rcpt.tls
    assert "starttls" not in mx.steps[0]  # the override is obeyed
    [result] = sink.results
    assert result.policy_type is PolicyType.STS
    assert result.policy_strings[1] == "mode: enforce"
    assert result.result_type == result_type
    assert result.failure_reason_code == code
