"""The one destination policy (`relay.delivery.policy`): table tests of the pure composition, and
one look-up through the lab DNS."""

from __future__ import annotations

from pathlib import Path

import pytest

from detect.dane import TlsaRecord
from detect.history import HostHistory
from lab.dns import LabDns
from mtasts.model import Mode, Policy, PolicyResult, PolicySource
from relay.config import Config, DnsConfig, DomainConfig, DomainTls
from relay.decision import Action
from relay.delivery.dane_lookup import TlsaLookup
from relay.delivery.mx import MxHost, MxResult, MxStatus
from relay.delivery.policy import (
    Destination,
    DestinationView,
    HostFacts,
    MxPlan,
    OnFailure,
    PolicyKind,
    Refusal,
    TlsLevel,
    destination,
    needs_sts,
    plan_host,
)
from relay.delivery.policy_lookup import lookup_destination
from relay.resolver import make_resolver
from relay.tls_rules import TlsaStatus
from tests.unbound_world import validating
from tlsrpt_emit.model import PolicyType, ResultType

DOMAIN = "example.org"
MX = ("mx1.example.org", "*.backup.example.org")
NOW = 1_800_000_000.0
DAY = 86400
USABLE = TlsaRecord(3, 1, 1, b"\x01" * 32)
UNUSABLE = TlsaRecord(1, 1, 1, b"\x01" * 32)
SECURE = TlsaLookup(TlsaStatus.SECURE, (USABLE,), "mx1.example.org", ("mx1.example.org",))
SECURE_UNUSABLE = TlsaLookup(TlsaStatus.SECURE, (UNUSABLE,), "mx1.example.org")
BOGUS = TlsaLookup(TlsaStatus.BOGUS, reason="SERVFAIL")
NO_TLSA = TlsaLookup(TlsaStatus.NONE, reason="no TLSA")


def sts(mode: Mode | None) -> PolicyResult:
    if mode is None:
        return PolicyResult(DOMAIN, None, PolicySource.NONE)
    text = f"version: STSv1\nmode: {mode}\nmx: {MX[0]}\nmx: {MX[1]}\nmax_age: 86400\n"
    return PolicyResult(DOMAIN, Policy(mode, 86400, MX, text), PolicySource.FRESH)


def config(tls: str = "mta-sts") -> Config:
    return Config(domains={DOMAIN: DomainConfig(tls=DomainTls(tls))})


def dest(tls: str = "mta-sts", mode: Mode | None = Mode.ENFORCE, **kw: bool) -> Destination:
    return destination(DOMAIN, config(tls), sts=sts(mode), **kw)


def plan(
    d: Destination,
    host: str = "mx1.example.org",
    tlsa: TlsaLookup | None = None,
    history: HostHistory | None = None,
    *,
    last_mx: bool = False,
) -> MxPlan:
    return plan_host(d, HostFacts(host, tlsa, history), last_mx=last_mx, now=NOW)


@pytest.mark.parametrize(
    ("tls", "mode", "tlsa", "kind", "level", "report", "on_failure"),
    [
        # (override, MTA-STS mode, TLSA of the host) -> what the plan says
        ("mta-sts", Mode.ENFORCE, None, "mta-sts-enforce", "verify", "sts", "next-mx"),
        ("mta-sts", Mode.TESTING, None, "mta-sts-testing", "opportunistic", "sts", "deliver"),
        ("mta-sts", Mode.NONE, None, "none", "opportunistic", "no-policy-found", "deliver"),
        ("mta-sts", None, None, "none", "opportunistic", "no-policy-found", "deliver"),
        ("mta-sts", Mode.ENFORCE, SECURE, "dane", "dane", "tlsa", "next-mx"),
        ("mta-sts", Mode.ENFORCE, SECURE_UNUSABLE, "dane", "encrypt", "tlsa", "next-mx"),
        ("mta-sts", Mode.ENFORCE, NO_TLSA, "mta-sts-enforce", "verify", "sts", "next-mx"),
        ("mta-sts", None, SECURE, "dane", "dane", "tlsa", "next-mx"),
        ("dane", None, SECURE, "dane", "dane", "tlsa", "next-mx"),
        ("dane", Mode.ENFORCE, NO_TLSA, "mta-sts-enforce", "verify", "sts", "next-mx"),
        ("dane-only", None, SECURE, "dane-only", "dane", "tlsa", "next-mx"),
        # an override applies, but a published policy is what sessions are reported under
        ("none", Mode.ENFORCE, None, "override", "none", "sts", "deliver"),
        ("verify", Mode.TESTING, None, "override", "verify", "sts", "next-mx"),
        ("none", Mode.NONE, None, "override", "none", "no-policy-found", "deliver"),
        ("none", None, None, "override", "none", "no-policy-found", "deliver"),
        ("encrypt", None, None, "override", "encrypt", "no-policy-found", "next-mx"),
        ("verify", None, None, "override", "verify", "no-policy-found", "next-mx"),
        ("opportunistic", None, None, "override", "opportunistic", "no-policy-found", "deliver"),
    ],
)
def test_plan_table(
    tls: str,
    mode: Mode | None,
    tlsa: TlsaLookup | None,
    kind: str,
    level: str,
    report: str,
    on_failure: str,
) -> None:
    p = plan(dest(tls, mode), tlsa=tlsa)
    assert (p.kind, p.tls) == (PolicyKind(kind), TlsLevel(level))
    assert p.report is not None
    assert p.report.policy_type is PolicyType(report)
    assert p.report.policy_domain == DOMAIN
    want = "deliver-and-record" if on_failure == "deliver" else on_failure
    assert p.on_failure is OnFailure(want)
    assert p.refusal is None


def test_the_last_mx_defers_under_a_strict_policy() -> None:
    assert plan(dest(), last_mx=True).on_failure is OnFailure.DEFER
    assert plan(dest(mode=Mode.TESTING), last_mx=True).on_failure is OnFailure.DELIVER


def test_sts_plan_names_the_pattern_and_the_policy_strings() -> None:
    p = plan(dest(), host="b.backup.example.org")
    assert p.sts_pattern == "*.backup.example.org"
    assert p.pkix_name == "b.backup.example.org"
    policy = sts(Mode.ENFORCE).policy
    assert policy is not None
    assert p.report is not None
    assert p.report.policy_strings == policy.policy_strings
    assert dest().sts_patterns == MX


def test_dane_plan_reports_the_tlsa_records() -> None:
    p = plan(dest(), tlsa=SECURE)
    assert p.dane_usable
    assert not p.dane_tempfail
    assert p.pkix_name is None
    assert p.sts_pattern is None
    assert p.report is not None
    assert p.report.policy_strings == (USABLE.to_text(),)
    assert p.policy.tlsa == (USABLE,)
    assert p.policy.dane_base == "mx1.example.org"


@pytest.mark.parametrize(
    ("tls", "tlsa", "result_type"),
    [
        ("mta-sts", BOGUS, ResultType.DNSSEC_INVALID),  # never a fall-back (RFC 7672 2.2)
        ("dane-only", NO_TLSA, ResultType.DANE_REQUIRED),
        ("dane-only", BOGUS, ResultType.DNSSEC_INVALID),
    ],
)
def test_dane_refusals_are_reported_under_tlsa(
    tls: str, tlsa: TlsaLookup, result_type: ResultType
) -> None:
    p = plan(dest(tls, mode=None), tlsa=tlsa)
    assert p.refused_by is Refusal.DANE
    assert p.refusal is not None
    assert p.refusal.result_type is result_type
    assert p.refusal.action is Action.NEXT_MX
    assert p.report is not None
    assert p.report.policy_type is PolicyType.TLSA
    assert p.report.policy_strings == ()
    last = plan(dest(tls, mode=None), tlsa=tlsa, last_mx=True)
    assert last.refusal is not None
    assert last.refusal.action is Action.DEFER
    assert p.dane_tempfail is (tlsa.status is TlsaStatus.BOGUS)


def test_an_unlisted_mx_is_refused_under_enforce_only() -> None:
    p = plan(dest(), host="mx.elsewhere.example")
    assert p.refused_by is Refusal.NOT_IN_POLICY
    assert p.refusal is not None
    assert p.refusal.result_type is None  # STS-11: not tried, nothing to report
    assert plan(dest(mode=Mode.TESTING), host="mx.elsewhere.example").refusal is None


def test_tls_required_no_makes_enforce_opportunistic_and_keeps_dane_out() -> None:
    d = dest(tls_required_no=True)
    assert not d.wants_tlsa(MxHost("mx1.example.org", 10, ("127.0.0.1",)))
    p = plan(d)
    assert p.tls is TlsLevel.OPPORTUNISTIC
    assert p.on_failure is OnFailure.DELIVER


def test_report_mail_is_never_reported() -> None:
    assert plan(dest(report_mail=True)).report is None  # RPT-10
    assert plan(destination("[127.0.0.1]", config(), sts=None)).report is None


def test_wants_tlsa_only_where_dane_can_apply() -> None:
    host = MxHost("mx1.example.org", 10, ("127.0.0.1",))
    assert dest().wants_tlsa(host)
    assert dest("dane-only").wants_tlsa(host)
    assert not dest("verify").wants_tlsa(host)
    assert not dest().wants_tlsa(MxHost("mx1.example.org", 10, ()))  # RFC 7672 2.2.2
    assert needs_sts(DomainTls.MTA_STS, literal=False)
    assert not needs_sts(DomainTls.MTA_STS, literal=True)  # STS-08
    assert needs_sts(DomainTls.DANE, literal=False)  # MTA-STS where a host has no DANE
    assert not needs_sts(DomainTls.DANE_ONLY, literal=False)
    assert needs_sts(DomainTls.NONE, literal=False)  # only to report under it


@pytest.mark.parametrize(
    ("tls", "mode", "last_starttls", "expected"),
    [
        ("mta-sts", Mode.ENFORCE, None, True),
        ("mta-sts", Mode.TESTING, None, True),
        ("mta-sts", None, None, False),
        ("mta-sts", None, NOW - DAY, True),  # remembered TLS (history_days = 30)
        ("mta-sts", None, NOW - 40 * DAY, False),
        ("encrypt", None, None, True),
    ],
)
def test_starttls_expectation(
    tls: str, mode: Mode | None, last_starttls: float | None, expected: bool
) -> None:
    history = HostHistory("mx1.example.org", last_starttls_at=last_starttls)
    d = dest(tls, mode)
    assert d.history_days == 30
    assert plan(d, history=history).expect_starttls is expected


def test_destination_view_summarises_the_domain() -> None:
    d = dest()
    mx = MxResult(DOMAIN, MxStatus.OK, secure=True)
    dane_everywhere = DestinationView(d, mx, (plan(d, tlsa=SECURE), plan(d, tlsa=SECURE)))
    assert dane_everywhere.kind is PolicyKind.DANE
    assert dane_everywhere.dane_on_every_mx
    mixed = DestinationView(d, mx, (plan(d, tlsa=SECURE), plan(d, tlsa=NO_TLSA)))
    assert mixed.kind is PolicyKind.DANE
    assert not mixed.dane_on_every_mx
    assert mixed.sts_patterns == MX
    tempfail = DestinationView(d, mx, (plan(d, tlsa=BOGUS), plan(d, tlsa=NO_TLSA)))
    assert tempfail.dane_tempfail
    assert tempfail.kind is PolicyKind.STS_ENFORCE
    only = dest("dane-only", None)
    assert DestinationView(only, mx, (plan(only, tlsa=SECURE),)).kind is PolicyKind.DANE_ONLY


async def test_lookup_destination_through_a_validating_resolver(
    lab_dns: LabDns, tmp_path: Path
) -> None:
    lab_dns.add("dane.test", "MX", "10 mx.dane.test.")
    lab_dns.add("dane.test", "MX", "20 mx2.dane.test.")
    lab_dns.add("mx.dane.test", "A", "127.0.0.10")
    lab_dns.add("mx2.dane.test", "A", "127.0.0.11")
    lab_dns.add("_25._tcp.mx.dane.test", "TLSA", "3 1 1 " + "ab" * 32)
    text = "version: STSv1\nmode: enforce\nmx: mx2.dane.test\nmax_age: 86400\n"
    policy = Policy(Mode.ENFORCE, 86400, ("mx2.dane.test",), text)
    asked: list[str] = []

    async def sts_lookup(domain: str) -> PolicyResult:
        asked.append(domain)
        return PolicyResult(domain, policy, PolicySource.FRESH)

    remembered = HostHistory("mx2.dane.test", last_starttls_at=NOW)
    async with validating(lab_dns, tmp_path / "unbound") as unbound:
        resolver = make_resolver(DnsConfig(nameservers=(unbound.address,), timeout=5))
        view = await lookup_destination(
            "dane.test",
            Config(dns=DnsConfig(nameservers=(unbound.address,))),
            resolver=resolver,
            sts=sts_lookup,
            history={"mx2.dane.test": remembered}.get,
            now=NOW,
        )
    assert asked == ["dane.test"]
    assert view.mx.secure
    assert view.kind is PolicyKind.DANE
    assert view.sts_patterns == ("mx2.dane.test",)
    assert [p.host for p in view.plans] == ["mx.dane.test", "mx2.dane.test"]
    dane, sts_plan = view.plans
    assert dane.kind is PolicyKind.DANE
    assert dane.dane_usable
    assert dane.refusal is None  # not in the MTA-STS policy, but DANE decides (STS-14)
    assert sts_plan.kind is PolicyKind.STS_ENFORCE
    assert sts_plan.tlsa is not None
    assert sts_plan.tlsa.status is TlsaStatus.NONE
    assert sts_plan.history == remembered
    assert sts_plan.on_failure is OnFailure.DEFER
    assert not view.dane_on_every_mx
    assert not view.dane_tempfail
