"""One contract for every store implementation: memory, SQLite, PostgreSQL, and PostgreSQL behind
the relay's memory front. What one behaves like, all do."""

from __future__ import annotations

from pathlib import Path

import pytest

from detect.history import HostHistory, TlsHistoryStore
from mtasts.cache import PolicyStore
from mtasts.model import Mode, Policy
from mtasts.state import CacheEntry, FetchFailure
from tests.relay.state.stores import KINDS, history_store, policy_store, report_store
from tests.tlsrpt_emit.sessions import DAY, NOON, day_results, sts
from tlsrpt_emit.model import FailureKey, PolicyType, ResultType
from tlsrpt_emit.sink import CountingSink
from tlsrpt_emit.store import ReportStore, SentReport

TEXT = "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 86400\n"
POLICY = Policy(Mode.ENFORCE, 86400, ("mx.example.org",), TEXT)
NOW = 1_800_000_000.0


@pytest.fixture(params=KINDS)
def policies(request: pytest.FixtureRequest, tmp_path: Path) -> PolicyStore:
    return policy_store(request.param, request, tmp_path)


@pytest.fixture(params=KINDS)
def history(request: pytest.FixtureRequest, tmp_path: Path) -> TlsHistoryStore:
    return history_store(request.param, request, tmp_path)


@pytest.fixture(params=KINDS)
def reports(request: pytest.FixtureRequest, tmp_path: Path) -> ReportStore:
    return report_store(request.param, request, tmp_path)


# --- PolicyStore -------------------------------------------------------------------------------


def test_policy_put_get_list_delete(policies: PolicyStore) -> None:
    assert policies.get("example.org") is None
    entry = CacheEntry.fetched("example.org", POLICY, "1", 100.0)
    other = CacheEntry.fetched("a.example", Policy(Mode.NONE, 60, ()), "x", 5.0)
    policies.put(entry)
    policies.put(other)
    assert policies.get("example.org") == entry
    assert policies.get("example.org").policy.text == TEXT  # type: ignore[union-attr]
    assert [e.domain for e in policies.list()] == ["a.example", "example.org"]
    newer = CacheEntry.fetched("example.org", POLICY, "2", 200.0)
    policies.put(newer)
    assert policies.get("example.org") == newer
    policies.delete("example.org")
    assert policies.get("example.org") is None
    assert [e.domain for e in policies.list()] == ["a.example"]


def test_sts05_policy_failures_kept_per_id(policies: PolicyStore) -> None:
    f1 = FetchFailure("1", 10.0, "sts-webpki-invalid", "certificate expired")
    policies.record_failure("example.org", f1)
    policies.record_failure("example.org", FetchFailure("2", 20.0, "sts-policy-fetch-error", "x"))
    assert policies.last_failure("example.org", "1") == f1
    assert policies.last_failure("example.org", "3") is None
    assert policies.last_failure("other.example", "1") is None
    policies.clear_failures("example.org")
    assert policies.last_failure("example.org", "1") is None
    assert policies.last_failure("example.org", "2") is None


# --- TlsHistoryStore ---------------------------------------------------------------------------


def test_history_records_and_keeps_the_last_good_times(history: TlsHistoryStore) -> None:
    assert history.get("mx.example.org") is None
    history.record("MX.Example.Org.", offered_starttls=True, valid_cert=True, now=NOW)
    history.record("mx.example.org", offered_starttls=False, valid_cert=False, now=NOW + 60)
    assert history.get("mx.EXAMPLE.org.") == HostHistory(
        "mx.example.org", last_starttls_at=NOW, last_valid_cert_at=NOW, last_seen_at=NOW + 60
    )
    history.record("mx.example.org", offered_starttls=True, valid_cert=False, now=NOW + 120)
    got = history.get("mx.example.org")
    assert got is not None
    assert (got.last_starttls_at, got.last_valid_cert_at) == (NOW + 120, NOW)
    history.record("b.example.org", offered_starttls=False, valid_cert=False, now=NOW)
    assert [h.host for h in history.all()] == ["b.example.org", "mx.example.org"]
    assert history.get("b.example.org") == HostHistory("b.example.org", None, None, NOW)
    assert history.forget("MX.example.org.")
    assert not history.forget("mx.example.org")
    assert history.get("mx.example.org") is None
    assert [h.host for h in history.all()] == ["b.example.org"]


# --- ReportStore -------------------------------------------------------------------------------


def test_reports_count_batches_and_add_up(reports: ReportStore) -> None:
    sink = CountingSink(reports, clock=lambda: 1000.0)
    for result in day_results():
        sink.record(result)
    assert reports.counts(DAY) == []  # record() never writes
    sink.flush()
    rows = reports.counts(DAY)
    assert [(r.key.policy_domain, r.key.policy_type) for r in rows] == [
        ("example.org", PolicyType.NO_POLICY_FOUND),
        ("example.org", PolicyType.STS),
        ("plain.example", PolicyType.NO_POLICY_FOUND),
    ]
    assert rows[1].successes == 3
    assert rows[1].failures == (
        (
            FailureKey(
                ResultType.CERTIFICATE_NOT_TRUSTED,
                sending_mta_ip="127.0.0.5",
                receiving_mx_hostname="mx1.mail.example.org",
                receiving_ip="127.0.0.21",
                failure_reason_code="X509_V_ERR_UNTRUSTED",
            ),
            2,
        ),
    )
    assert reports.domains(DAY) == ["example.org", "plain.example"]
    sink.record(sts())
    sink.record(sts(ResultType.CERTIFICATE_EXPIRED))
    sink.flush()
    (row,) = [r for r in reports.counts(DAY, "example.org") if r.key.policy_type is PolicyType.STS]
    assert (row.successes, row.failure_total) == (4, 3)
    assert reports.counts(DAY, "nobody.example") == []


def test_reports_sent_bookkeeping(reports: ReportStore) -> None:
    assert reports.get_sent(DAY, "example.org") is None
    sent = SentReport(
        day=DAY,
        domain="example.org",
        report_id="r1",
        destinations_done=("https://r.example.org/",),
        attempts=2,
        first_attempt=NOON,
        next_retry=None,
        status="delivered",
    )
    reports.put_sent(sent)
    reports.put_sent(SentReport(day=DAY, domain="plain.example", report_id="r2", next_retry=5.0))
    assert reports.get_sent(DAY, "example.org") == sent
    assert [s.report_id for s in reports.pending_sent()] == ["r2"]
    reports.put_sent(SentReport(day=DAY, domain="plain.example", report_id="r2", status="failed"))
    assert reports.pending_sent() == []


def test_reports_claim_is_exclusive_until_released_or_expired(reports: ReportStore) -> None:
    assert reports.claim(DAY, "example.org", now=NOON, lease=600)
    assert not reports.claim(DAY, "example.org", now=NOON + 1, lease=600)
    assert reports.claim(DAY, "other.example", now=NOON + 1, lease=600)  # per domain
    reports.release(DAY, "example.org")
    assert reports.claim(DAY, "example.org", now=NOON + 2, lease=600)
    # A holder that died never releases: its lease runs out.
    assert not reports.claim(DAY, "example.org", now=NOON + 601, lease=600)
    assert reports.claim(DAY, "example.org", now=NOON + 603, lease=600)
