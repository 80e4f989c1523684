"""Session results of one day and small helpers, shared by the TLS-RPT tests."""

from __future__ import annotations

import datetime

import dns.asyncresolver
import dns.nameserver

from lab.dns import LabDns
from tlsrpt_emit.model import PolicyType, ResultType, SessionResult
from tlsrpt_emit.sink import CountingSink
from tlsrpt_emit.store import MemoryReportStore

DAY = datetime.date(2026, 11, 28)
NOON = datetime.datetime(2026, 11, 28, 12, tzinfo=datetime.UTC).timestamp()
STS_STRINGS = ("version: STSv1", "mode: testing", "mx: *.mail.example.org", "max_age: 86400")


def sts(result_type: ResultType | None = None, when: float = NOON, **kw: str) -> SessionResult:
    return SessionResult(
        policy_domain="example.org",
        policy_type=PolicyType.STS,
        policy_strings=STS_STRINGS,
        when=when,
        mx_host="mx1.mail.example.org",
        receiving_ip="127.0.0.21",
        sending_mta_ip="127.0.0.5",
        result_type=result_type,
        **kw,  # type: ignore[arg-type]
    )


def day_results() -> list[SessionResult]:
    """3 successes, 2 testing-mode cert failures, 1 policy fetch error, 2 no-policy sessions."""
    return [
        sts(),
        sts(),
        sts(),
        sts(ResultType.CERTIFICATE_NOT_TRUSTED, failure_reason_code="X509_V_ERR_UNTRUSTED"),
        sts(ResultType.CERTIFICATE_NOT_TRUSTED, failure_reason_code="X509_V_ERR_UNTRUSTED"),
        SessionResult(
            policy_domain="example.org",
            policy_type=PolicyType.NO_POLICY_FOUND,
            policy_strings=(),
            when=NOON + 60,
            result_type=ResultType.STS_POLICY_FETCH_ERROR,
            failure_reason_code="HTTP 404",
            sending_mta_ip="127.0.0.5",
        ),
        SessionResult(
            policy_domain="plain.example",
            policy_type=PolicyType.NO_POLICY_FOUND,
            policy_strings=(),
            when=NOON,
            mx_host="mx.plain.example",
            receiving_ip="127.0.0.30",
            sending_mta_ip="127.0.0.5",
        ),
        SessionResult(
            policy_domain="plain.example",
            policy_type=PolicyType.NO_POLICY_FOUND,
            policy_strings=(),
            when=NOON + 1,
            mx_host="mx.plain.example",
            receiving_ip="127.0.0.30",
            sending_mta_ip="127.0.0.5",
        ),
    ]


def filled_store() -> MemoryReportStore:
    """A store holding `day_results()`."""
    store = MemoryReportStore()
    sink = CountingSink(store, clock=lambda: 0.0)
    for result in day_results():
        sink.record(result)
    sink.flush()
    return store


def resolver_for(server: LabDns) -> dns.asyncresolver.Resolver:
    """A resolver that asks only the lab DNS server."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
    resolver.lifetime = 2.0
    resolver.timeout = 1.0
    return resolver
