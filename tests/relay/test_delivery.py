"""The deliverer against real lab MX hosts on loopback, named through the lab DNS server."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.asyncresolver
import pytest
import structlog
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import LogCapture, capture_logs

from lab.dns import LabDns
from lab.mx import CertKind, LabMx
from lab.pki import LabCA
from lab.policy_host import PolicyHost
from mtasts.cache import MemoryPolicyStore
from mtasts.model import Mode, Policy, PolicyFailure, PolicyResult, PolicySource, StsRecord
from mtasts.service import PolicyService
from relay.config import (
    Config,
    DeliveryConfig,
    DetectConfig,
    DnsConfig,
    DomainConfig,
    RelayConfig,
)
from relay.decision import Action
from relay.delivery.deliverer import Deliverer, DeliveryRequest, RcptStatus, normalize_crlf
from relay.delivery.transfer import dot_stuffed
from relay.errors import ConfigError
from relay.message_flags import MessageFlags
from relay.metrics import Metrics, start_metrics_server
from relay.resolver import make_resolver
from relay.tls import client_context, unverified_context
from tlsrpt_emit.model import MemorySink, PolicyType

StartMx = Callable[..., Awaitable[LabMx]]
DOMAIN = "example.org"


class StubPolicies:
    """A policy service answering a fixed result (the real one needs a policy host)."""

    def __init__(self, result: PolicyResult | None = None) -> None:
        self.result = result
        self.asked: list[str] = []

    async def get(self, domain: str) -> PolicyResult:
        self.asked.append(domain)
        return self.result or PolicyResult(domain, None, PolicySource.NONE)


def sts(mode: Mode, *mx: str) -> PolicyResult:
    patterns = mx or ("mx1.example.org", "mx2.example.org")
    text = "\n".join(
        ["version: STSv1", f"mode: {mode}", *(f"mx: {p}" for p in patterns), "max_age: 86400"]
    )
    return PolicyResult(DOMAIN, Policy(mode, 86400, patterns, text), PolicySource.FRESH)


def make_config(port: int, **domains: str) -> Config:
    return Config(
        relay=RelayConfig(hostname="relay.test"),
        delivery=DeliveryConfig(port=port, connect_timeout=3, command_timeout=5),
        detect=DetectConfig(on_downgrade="defer"),
        domains={d.replace("_", "."): DomainConfig(tls=t) for d, t in domains.items()},
    )


def request(n: int = 1, *, rcpt: str = f"bob@{DOMAIN}", **flags: bool) -> DeliveryRequest:
    """Request `n` to `rcpt`; `flags` are the message's (`MessageFlags`)."""
    return DeliveryRequest(
        f"q{n}",
        "alice@sender.test",
        (rcpt,),
        f"Subject: {n}\r\n\r\nhello {n}\r\n".encode(),
        flags=MessageFlags(**flags),
    )


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def make_deliverer(
    lab_ca: LabCA,
    lab_resolver: dns.asyncresolver.Resolver,
    sink: MemorySink,
    history_store: Any,
) -> Callable[..., Deliverer]:
    def make(port: int, policy: PolicyResult | None = None, **kwargs: Any) -> Deliverer:
        config = kwargs.pop("config", None) or make_config(port)
        return Deliverer(
            config,
            resolver=lab_resolver,
            policy_service=StubPolicies(policy),
            history_store=history_store,
            sink=sink,
            ssl_context=client_context(str(lab_ca.ca_file)),
            **kwargs,
        )

    return make


def mx_records(lab_dns: LabDns, *hosts: tuple[int, str]) -> None:
    for pref, host in hosts:
        lab_dns.add(DOMAIN, "MX", f"{pref} {host}.")


async def test_sts11_tls03_enforce_valid_certificate_delivers_over_tls(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer], sink: MemorySink
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.31")
    mx_records(lab_dns, (10, "mx1.example.org"))
    deliverer = make_deliverer(mx.port, sts(Mode.ENFORCE))
    outcome = await deliverer.deliver(request())
    await deliverer.close()
    [rcpt] = outcome.delivered
    assert rcpt.tls
    [msg] = mx.messages
    assert msg.tls
    # TLS-03: aiosmtpd forgets the plaintext EHLO at the handshake; MAIL was accepted, so
    # EHLO was said again inside TLS.
    assert msg.helo == "relay.test"
    [result] = sink.results
    assert result.success
    assert result.policy_type is PolicyType.STS
    assert (result.mx_host, result.receiving_ip) == ("mx1.example.org", "127.0.0.31")
    assert result.receiving_mx_helo == "mx1.example.org"
    assert result.policy_strings[1] == "mode: enforce"
    assert result.sending_mta_ip == "127.0.0.1"


@pytest.mark.parametrize(
    ("cert", "result_type"),
    [
        (CertKind.WRONG_NAME, "certificate-host-mismatch"),
        (CertKind.EXPIRED, "certificate-expired"),
        (CertKind.UNTRUSTED, "certificate-not-trusted"),
        (CertKind.NONE, "starttls-not-supported"),
    ],
)
async def test_sts11_enforce_bad_tls_is_deferred_with_result_type(
    start_mx: StartMx,
    lab_dns: LabDns,
    make_deliverer: Callable[..., Deliverer],
    sink: MemorySink,
    cert: CertKind,
    result_type: str,
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.32", cert=cert)
    mx_records(lab_dns, (10, "mx1.example.org"))
    outcome = await make_deliverer(mx.port, sts(Mode.ENFORCE)).deliver(request())
    assert mx.messages == []
    [rcpt] = outcome.deferred
    assert rcpt.result_type == result_type
    [result] = sink.results
    assert result.result_type == result_type
    if cert is not CertKind.NONE:
        assert result.failure_reason_code


@pytest.mark.parametrize(
    ("cert", "result_type", "tls"),
    [
        (CertKind.EXPIRED, "certificate-expired", True),
        (CertKind.WRONG_NAME, "certificate-host-mismatch", True),
        (CertKind.NONE, "starttls-not-supported", False),
    ],
)
async def test_sts11_testing_delivers_and_reports(
    start_mx: StartMx,
    lab_dns: LabDns,
    make_deliverer: Callable[..., Deliverer],
    sink: MemorySink,
    cert: CertKind,
    result_type: str,
    tls: bool,
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.33", cert=cert)
    mx_records(lab_dns, (10, "mx1.example.org"))
    outcome = await make_deliverer(mx.port, sts(Mode.TESTING)).deliver(request())
    [rcpt] = outcome.delivered
    assert rcpt.tls is tls
    [msg] = mx.messages
    assert msg.tls is tls
    [result] = sink.results
    assert result.result_type == result_type


async def test_sts13_bad_primary_good_backup_under_enforce(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer], sink: MemorySink
) -> None:
    primary = await start_mx("mx1.example.org", "127.0.0.34", cert=CertKind.EXPIRED)
    backup = await start_mx("mx2.example.org", "127.0.0.35", port=primary.port)
    mx_records(lab_dns, (10, "mx1.example.org"), (20, "mx2.example.org"))
    outcome = await make_deliverer(primary.port, sts(Mode.ENFORCE)).deliver(request())
    assert outcome.delivered[0].mx_host == "mx2.example.org"
    assert primary.messages == []
    assert len(backup.messages) == 1
    assert [r.result_type for r in sink.results] == ["certificate-expired", None]


async def test_sts13_mx_not_in_policy_is_skipped(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer], sink: MemorySink
) -> None:
    spoofed = await start_mx("evil.example.net", "127.0.0.36")
    good = await start_mx("mx1.example.org", "127.0.0.37", port=spoofed.port)
    mx_records(lab_dns, (5, "evil.example.net"), (10, "mx1.example.org"))
    outcome = await make_deliverer(spoofed.port, sts(Mode.ENFORCE)).deliver(request())
    assert outcome.delivered
    assert spoofed.connections == 0
    assert len(good.messages) == 1
    assert [r.mx_host for r in sink.results] == ["mx1.example.org"]


async def test_enforce_only_unlisted_mx_defers(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer], sink: MemorySink
) -> None:
    spoofed = await start_mx("evil.example.net", "127.0.0.38")
    mx_records(lab_dns, (5, "evil.example.net"))
    outcome = await make_deliverer(spoofed.port, sts(Mode.ENFORCE)).deliver(request())
    assert outcome.deferred
    assert spoofed.connections == 0
    assert sink.results == []


async def test_no_policy_opportunistic_without_starttls_delivers_plaintext(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer], sink: MemorySink
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.39", cert=CertKind.NONE)
    mx_records(lab_dns, (10, "mx1.example.org"))
    outcome = await make_deliverer(mx.port).deliver(request())
    [rcpt] = outcome.delivered
    assert not rcpt.tls
    assert not mx.messages[0].tls
    [result] = sink.results
    assert result.policy_type is PolicyType.NO_POLICY_FOUND
    assert result.success


async def test_no_policy_bad_certificate_still_encrypts(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer]
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.40", cert=CertKind.UNTRUSTED)
    mx_records(lab_dns, (10, "mx1.example.org"))
    outcome = await make_deliverer(mx.port).deliver(request())
    assert outcome.delivered[0].tls
    assert mx.messages[0].tls


async def test_local_verify_override_defers_bad_certificate(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer]
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.41", cert=CertKind.UNTRUSTED)
    mx_records(lab_dns, (10, "mx1.example.org"))
    config = make_config(mx.port, example_org="verify")
    outcome = await make_deliverer(mx.port, config=config).deliver(request())
    assert outcome.deferred[0].result_type == "certificate-not-trusted"
    assert mx.messages == []


async def test_tls_required_no_delivers_despite_enforce(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer]
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.42", cert=CertKind.NONE)
    mx_records(lab_dns, (10, "mx1.example.org"))
    deliverer = make_deliverer(mx.port, sts(Mode.ENFORCE))
    outcome = await deliverer.deliver(request(tls_required_no=True))
    assert outcome.delivered


async def test_rpt10_report_mail_is_delivered_and_not_reported(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer], sink: MemorySink
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.43", cert=CertKind.EXPIRED)
    mx_records(lab_dns, (10, "mx1.example.org"))
    failed = PolicyResult(
        DOMAIN,
        sts(Mode.ENFORCE).policy,
        PolicySource.CACHED,
        failure=PolicyFailure("sts-policy-fetch-error", "connection refused"),
    )
    outcome = await make_deliverer(mx.port, failed).deliver(request(no_tlsrpt=True))
    assert outcome.delivered
    assert sink.results == []


async def test_policy_fetch_failure_emits_one_result(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer], sink: MemorySink
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.44")
    mx_records(lab_dns, (10, "mx1.example.org"))
    failed = PolicyResult(
        DOMAIN,
        sts(Mode.ENFORCE).policy,
        PolicySource.CACHED,
        failure=PolicyFailure("sts-policy-fetch-error", "connection refused"),
    )
    outcome = await make_deliverer(mx.port, failed).deliver(request())
    assert outcome.delivered[0].tls
    assert [r.result_type for r in sink.results] == ["sts-policy-fetch-error", None]


async def test_null_mx_bounces(
    lab_dns: LabDns, make_deliverer: Callable[..., Deliverer], sink: MemorySink
) -> None:
    lab_dns.add(DOMAIN, "MX", "0 .")
    outcome = await make_deliverer(2525).deliver(request())
    [rcpt] = outcome.bounced
    assert "null MX" in rcpt.reason
    assert sink.results == []


async def test_dns_failure_defers(
    lab_dns: LabDns, make_deliverer: Callable[..., Deliverer]
) -> None:
    lab_dns.add(DOMAIN, "MX", "10 mx1.example.org.")
    lab_dns.servfail(DOMAIN)
    outcome = await make_deliverer(2525).deliver(request())
    assert outcome.deferred


async def test_recipient_rejected_bounces(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer]
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.45", rcpt_reply="550 5.1.1 no such user")
    mx_records(lab_dns, (10, "mx1.example.org"))
    outcome = await make_deliverer(mx.port, sts(Mode.ENFORCE)).deliver(request())
    [rcpt] = outcome.bounced
    assert "550" in rcpt.reason


async def test_unreachable_mx_defers(
    lab_dns: LabDns, make_deliverer: Callable[..., Deliverer], sink: MemorySink
) -> None:
    lab_dns.add(DOMAIN, "MX", "10 mx1.example.org.")
    lab_dns.add("mx1.example.org", "A", "127.0.0.46")
    outcome = await make_deliverer(9).deliver(request())  # nothing listens
    assert outcome.deferred
    assert sink.results == []  # no TLS session happened


async def test_connection_reuse_three_messages_one_connection(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer], sink: MemorySink
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.47")
    mx_records(lab_dns, (10, "mx1.example.org"))
    metrics = Metrics()
    deliverer = make_deliverer(mx.port, sts(Mode.ENFORCE), metrics=metrics)
    for n in range(3):
        assert (await deliverer.deliver(request(n))).delivered
    await deliverer.close()
    assert mx.connections == 1
    assert [m.data.split(b"\r\n")[0] for m in mx.messages] == [
        b"Subject: 0",
        b"Subject: 1",
        b"Subject: 2",
    ]
    assert len(sink.results) == 3
    assert metrics.value("stsguard_delivered_total", {"tls": "yes"}) == 3


async def test_idle_connection_expires(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer]
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.48")
    mx_records(lab_dns, (10, "mx1.example.org"))
    now = [time.time()]
    deliverer = make_deliverer(mx.port, sts(Mode.ENFORCE), clock=lambda: now[0], idle_timeout=5)
    await deliverer.deliver(request(1))
    now[0] += 6
    await deliverer.deliver(request(2))
    await deliverer.close()
    assert mx.connections == 2


async def test_tls06_bare_lf_is_sent_as_crlf_and_dot_stuffed(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer]
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.49")
    mx_records(lab_dns, (10, "mx1.example.org"))
    data = b"Subject: s\n\nline one\n.\nMAIL FROM:<x@y>\r\n.\r\nafter\rend"
    req = DeliveryRequest("q", "a@sender.test", (f"b@{DOMAIN}",), data)
    assert (await make_deliverer(mx.port).deliver(req)).delivered
    [msg] = mx.messages
    assert (
        msg.data == b"Subject: s\r\n\r\nline one\r\n.\r\nMAIL FROM:<x@y>\r\n.\r\nafter\r\nend\r\n"
    )
    assert normalize_crlf(b"a\nb") == b"a\r\nb\r\n"


class _InjectingSmtp(SMTP):  # type: ignore[misc]
    """An MX whose STARTTLS 220 is followed by injected plaintext (a TLS-04 attack)."""

    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push("220 Ready to start TLS\r\n250-injected\r\n250 OK")
        await asyncio.sleep(0.05)
        self.transport.close()


@pytest.mark.parametrize("mode", [Mode.ENFORCE, Mode.TESTING])
async def test_tls04_injected_plaintext_aborts_tls(
    lab_ca: LabCA,
    lab_dns: LabDns,
    make_deliverer: Callable[..., Deliverer],
    sink: MemorySink,
    mode: Mode,
) -> None:
    context = lab_ca.issue("mx1.example.org").server_context()
    recorder = LabMx("127.0.0.50", hostname="mx1.example.org", tls_context=context)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _InjectingSmtp(
            recorder.make_handler(), hostname="mx1.example.org", tls_context=context
        ),
        "127.0.0.50",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    lab_dns.add("mx1.example.org", "A", "127.0.0.50")
    mx_records(lab_dns, (10, "mx1.example.org"))
    try:
        outcome = await make_deliverer(port, sts(mode)).deliver(request())
    finally:
        server.close()
    [result] = sink.results
    assert result.result_type == "validation-failure"
    assert result.failure_reason_code == "plaintext-injection"
    if mode is Mode.ENFORCE:
        [rcpt] = outcome.deferred
        assert rcpt.result_type == "validation-failure"
        assert "plaintext-injection" in rcpt.reason
        assert recorder.messages == []
    else:
        # testing: the TLS attempt is void; a fresh plaintext session delivers and reports.
        [rcpt] = outcome.delivered
        assert not rcpt.tls
        [msg] = recorder.messages
        assert not msg.tls


async def test_concurrency_per_destination_is_bounded(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer]
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.51")
    mx_records(lab_dns, (10, "mx1.example.org"))
    config = Config(
        relay=RelayConfig(hostname="relay.test"),
        delivery=DeliveryConfig(port=mx.port, concurrency_per_destination=2),
    )
    deliverer = make_deliverer(mx.port, config=config)
    outcomes = await asyncio.gather(*(deliverer.deliver(request(n)) for n in range(5)))
    await deliverer.close()
    assert all(o.delivered for o in outcomes)
    assert mx.connections <= 2


def test_metrics_registries_are_independent_and_served() -> None:
    first, second = Metrics(), Metrics()
    first.accepted.inc()
    first.findings.labels(kind="starttls-stripped").inc(2)
    first.deferred.labels(reason="certificate-expired").inc()
    first.follow_policy_cache(lambda: 7, lambda: 3)
    assert first.value("stsguard_accepted_total") == 1
    assert second.value("stsguard_accepted_total") == 0
    assert first.value("stsguard_policy_cache_hits_total") == 7
    server = start_metrics_server("127.0.0.1:0", first.registry)
    try:
        host, port = server.server_address[:2]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{host!s}:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'stsguard_findings_total{kind="starttls-stripped"} 2.0' in body
    assert "stsguard_policy_cache_misses_total 3.0" in body


async def test_remembered_tls_downgrade_defers_without_policy(
    start_mx: StartMx,
    lab_ca: LabCA,
    lab_dns: LabDns,
    make_deliverer: Callable[..., Deliverer],
    sink: MemorySink,
) -> None:
    good = await start_mx("mx1.example.org", "127.0.0.52")
    mx_records(lab_dns, (10, "mx1.example.org"))
    deliverer = make_deliverer(good.port)
    assert (await deliverer.deliver(request(1))).delivered[0].tls
    await deliverer.close()
    await good.stop()
    stripped = LabMx.with_cert(lab_ca, "mx1.example.org", host="127.0.0.52", cert=CertKind.NONE)
    async with stripped.running(good.port):
        with capture_logs() as logs:
            outcome = await deliverer.deliver(request(2))
    [rcpt] = outcome.deferred
    assert "downgrade" in rcpt.reason
    assert rcpt.result_type == "starttls-not-supported"
    assert stripped.messages == []
    [line] = [entry for entry in logs if entry["event"] == "delivery.attempt"]
    assert line["policy_mode"] == "opportunistic"
    assert line["action"] == "defer"
    assert "downgrade" in [f["kind"] for f in line["findings"]]


async def test_sts12_expiry_rechecks_the_txt_id(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer]
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.53", cert=CertKind.EXPIRED)
    mx_records(lab_dns, (10, "mx1.example.org"))
    policy = replace(sts(Mode.ENFORCE), record=StsRecord("20240101"))
    deliverer = make_deliverer(mx.port, policy)
    outcome = await deliverer.deliver(request())
    assert outcome.tls_failure
    assert outcome.policy_id == "20240101"
    # same id published: the message fails for good
    lab_dns.add("_mta-sts.example.org", "TXT", "v=STSv1; id=20240101")
    same = await deliverer.expiry_decision(
        DOMAIN, tls_failure=outcome.tls_failure, failed_policy_id=outcome.policy_id
    )
    assert same.action is Action.BOUNCE
    # a new id: one more try with the new policy
    lab_dns.set("_mta-sts.example.org", "TXT", ["v=STSv1; id=20240202"])
    new = await deliverer.expiry_decision(
        DOMAIN, tls_failure=outcome.tls_failure, failed_policy_id=outcome.policy_id
    )
    assert new.action is Action.DEFER
    # not a TLS failure: no look-up, bounce
    other = await deliverer.expiry_decision(DOMAIN, tls_failure=False, failed_policy_id="x")
    assert other.action is Action.BOUNCE


class _NoEhloSmtp(SMTP):  # type: ignore[misc]
    """An MX (or an attacker in front of it) that refuses EHLO: the HELO downgrade."""

    helo_seen: list[str]

    async def smtp_EHLO(self, arg: str) -> None:
        await self.push("502 5.5.1 EHLO not implemented")

    async def smtp_HELO(self, arg: str) -> None:
        self.helo_seen.append(arg)
        await super().smtp_HELO(arg)


@pytest.mark.parametrize(("mode", "delivered"), [(Mode.ENFORCE, False), (None, True)])
async def test_tls07_ehlo_refused_no_helo_fallback_under_enforce(
    lab_ca: LabCA,
    lab_dns: LabDns,
    make_deliverer: Callable[..., Deliverer],
    mode: Mode | None,
    delivered: bool,
) -> None:
    context = lab_ca.issue("mx1.example.org").server_context()
    recorder = LabMx("127.0.0.54", hostname="mx1.example.org", tls_context=context)
    helo_seen: list[str] = []

    def protocol() -> SMTP:
        smtp = _NoEhloSmtp(recorder.make_handler(), hostname="mx1.example.org", tls_context=context)
        smtp.helo_seen = helo_seen
        return smtp

    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.54", 0)
    port = server.sockets[0].getsockname()[1]
    lab_dns.add("mx1.example.org", "A", "127.0.0.54")
    mx_records(lab_dns, (10, "mx1.example.org"))
    try:
        outcome = await make_deliverer(port, sts(mode) if mode else None).deliver(request())
    finally:
        server.close()
    if delivered:
        assert outcome.delivered
        assert helo_seen == ["relay.test"]
        assert not recorder.messages[0].tls
    else:
        [rcpt] = outcome.deferred
        assert rcpt.result_type == "starttls-not-supported"
        assert helo_seen == []
        assert recorder.messages == []


async def test_real_policy_service_enforce_end_to_end(
    start_mx: StartMx,
    lab_ca: LabCA,
    lab_dns: LabDns,
    lab_resolver: dns.asyncresolver.Resolver,
    sink: MemorySink,
    history_store: Any,
) -> None:
    """PolicyService fetches the policy from the lab policy host; an unlisted MX is skipped."""
    host = PolicyHost(lab_ca, host="127.0.0.55")
    text = "version: STSv1\nmode: enforce\nmx: mx1.example.org\nmax_age: 86400\n"
    host.set_policy(DOMAIN, text)
    lab_dns.add("_mta-sts.example.org", "TXT", "v=STSv1; id=7")
    lab_dns.add("mta-sts.example.org", "A", "127.0.0.55")
    spoofed = await start_mx("evil.example.net", "127.0.0.56")
    good = await start_mx("mx1.example.org", "127.0.0.57", port=spoofed.port)
    mx_records(lab_dns, (5, "evil.example.net"), (10, "mx1.example.org"))
    context = client_context(str(lab_ca.ca_file))
    async with host.running():
        service = PolicyService(
            MemoryPolicyStore(), lab_resolver, context, https_port=host.port, fetch_timeout=5
        )
        deliverer = Deliverer(
            make_config(good.port),
            resolver=lab_resolver,
            policy_service=service,
            history_store=history_store,
            sink=sink,
            ssl_context=context,
        )
        outcome = await deliverer.deliver(request())
        await deliverer.close()
    assert outcome.delivered[0].tls
    assert outcome.policy_id == "7"
    assert spoofed.connections == 0
    [result] = sink.results
    assert result.policy_type is PolicyType.STS
    assert result.policy_strings == tuple(text.strip().split("\n"))


async def test_sts10_sni_is_the_mx_host_name_and_tls12_or_newer(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer]
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.58")
    assert mx.tls_context is not None
    server_names: list[str | None] = []
    mx.tls_context.sni_callback = lambda _obj, name, _ctx: server_names.append(name)
    mx_records(lab_dns, (10, "mx1.example.org"))
    outcome = await make_deliverer(mx.port, sts(Mode.ENFORCE)).deliver(request())
    assert outcome.delivered
    assert server_names == ["mx1.example.org"]  # not the IP the connection went to
    assert mx.messages[0].tls_version in ("TLSv1.2", "TLSv1.3")


def test_sts10_client_contexts(lab_ca: LabCA, tmp_path: Path) -> None:
    strict = client_context(str(lab_ca.ca_file))
    assert strict.minimum_version is ssl.TLSVersion.TLSv1_2
    assert strict.check_hostname
    assert strict.verify_mode is ssl.CERT_REQUIRED
    loose = unverified_context()
    assert not loose.check_hostname
    assert loose.verify_mode is ssl.CERT_NONE
    with pytest.raises(ConfigError, match=r"\[tls\]\.ca_file"):
        client_context(str(tmp_path / "missing.pem"))


async def test_one_log_line_per_attempt_with_bound_context(
    start_mx: StartMx, lab_dns: LabDns, make_deliverer: Callable[..., Deliverer]
) -> None:
    primary = await start_mx("mx1.example.org", "127.0.0.59", cert=CertKind.WRONG_NAME)
    await start_mx("mx2.example.org", "127.0.0.60", port=primary.port)
    mx_records(lab_dns, (10, "mx1.example.org"), (20, "mx2.example.org"))
    capture = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        await make_deliverer(primary.port, sts(Mode.ENFORCE)).deliver(request(7))
    finally:
        structlog.reset_defaults()
    lines = [e for e in capture.entries if e["event"] == "delivery.attempt"]
    assert [(e["mx_host"], e["action"]) for e in lines] == [
        ("mx1.example.org", "next-mx"),
        ("mx2.example.org", "deliver-tls"),
    ]
    first, second = lines
    assert first["queue_id"] == "q7"
    assert first["recipient_domain"] == DOMAIN
    assert first["policy_mode"] == "enforce"
    assert first["result_type"] == "certificate-host-mismatch"
    assert first["findings"][0]["kind"] == "tls-failure"
    assert second["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert second["cipher"]
    assert second["outcome"] == "delivered"


async def test_sts08_address_literal_has_no_policy(
    start_mx: StartMx, lab_dns: LabDns, lab_ca: LabCA, sink: MemorySink, history_store: Any
) -> None:
    mx = await start_mx("mx1.example.org", "127.0.0.61", cert=CertKind.NONE)
    policies = StubPolicies(sts(Mode.ENFORCE))
    deliverer = Deliverer(
        make_config(mx.port),
        resolver=make_resolver(DnsConfig(nameservers=(lab_dns.address,), timeout=2)),
        policy_service=policies,
        history_store=history_store,
        sink=sink,
        ssl_context=client_context(str(lab_ca.ca_file)),
    )
    outcome = await deliverer.deliver(request(rcpt="bob@[127.0.0.61]"))
    await deliverer.close()
    assert outcome.delivered
    assert policies.asked == []
    assert sink.results == []
    assert mx.messages[0].rcpt_tos == ("bob@[127.0.0.61]",)


async def test_smtputf8_message_bounces_at_a_next_hop_without_smtputf8(
    start_mx: Callable[..., Any], make_deliverer: Callable[..., Deliverer], lab_dns: LabDns
) -> None:
    mx = await start_mx(f"mx1.{DOMAIN}", "127.0.0.11")  # aiosmtpd: no SMTPUTF8 unless enabled
    mx_records(lab_dns, (10, f"mx1.{DOMAIN}"))
    deliverer = make_deliverer(mx.port)
    outcome = await deliverer.deliver(request(smtputf8=True))
    await deliverer.close()
    assert [r.status for r in outcome.rcpts] == [RcptStatus.BOUNCED]
    assert "5.6.7" in outcome.rcpts[0].reason
    assert mx.messages == []


async def test_8bit_body_with_8bitmime_flag_is_delivered_intact(
    start_mx: Callable[..., Any], make_deliverer: Callable[..., Deliverer], lab_dns: LabDns
) -> None:
    mx = await start_mx(f"mx1.{DOMAIN}", "127.0.0.11")
    mx_records(lab_dns, (10, f"mx1.{DOMAIN}"))
    deliverer = make_deliverer(mx.port)
    body = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode()
    outcome = await deliverer.deliver(
        DeliveryRequest(
            "q8", "alice@sender.test", (f"bob@{DOMAIN}",), body, flags=MessageFlags(eight_bit=True)
        )
    )
    await deliverer.close()
    assert [r.status for r in outcome.rcpts] == [RcptStatus.DELIVERED]
    assert "d\u00e9j\u00e0 vu".encode() in mx.messages[0].data


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"x", b"."]), max_size=30))
def test_normalize_crlf_leaves_no_bare_line_end(parts: list[bytes]) -> None:
    data = b"".join(parts)
    out = normalize_crlf(data)
    assert out.endswith(b"\r\n")
    assert out.count(b"\r") == out.count(b"\n") == out.count(b"\r\n")
    assert out.replace(b"\r\n", b"") == data.replace(b"\r\n", b"").replace(b"\r", b"").replace(
        b"\n", b""
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60).map(lambda b: bytes(b".\r\nx"[c % 4] for c in b)))
def test_dot_stuffing_doubles_the_dot_at_every_line_start(data: bytes) -> None:
    """RFC 5321 4.5.2, as a regular expression says it: a dot at the start of any line of the
    normalised message is doubled (dot_stuffed does it with two byte replacements)."""
    expected = re.sub(rb"(?m)^\.", b"..", normalize_crlf(data)) + b".\r\n"
    assert dot_stuffed(data) == expected
