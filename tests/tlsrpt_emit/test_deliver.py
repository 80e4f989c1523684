"""Delivery and scheduling against real loopback parts: lab DNS, lab CA, the HTTPS collector."""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import gzip
import json
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from lab.collector import ReportCollector
from lab.dns import LabDns
from lab.pki import LabCA
from tests.tlsrpt_emit.sessions import DAY, filled_store, resolver_for
from tlsrpt_emit.deliver import post_report
from tlsrpt_emit.errors import HttpsDeliveryError
from tlsrpt_emit.render import MEDIA_TYPE_GZIP
from tlsrpt_emit.schedule import (
    RETRY_WINDOW,
    Clients,
    ReportSender,
    ReportSettings,
    next_retry_at,
    next_run,
    report_day,
    retry_delay,
    retry_due,
    send_day,
)

SETTINGS = ReportSettings(organization_name="Reporter Org", contact_info="t@reporter.example")
NEXT_MIDNIGHT = datetime.datetime(2026, 11, 29, tzinfo=datetime.UTC).timestamp()


@pytest.fixture
async def http(lab_ca: LabCA) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        verify=lab_ca.client_context(), trust_env=False, timeout=5.0
    ) as client:
        yield client


def collector_for(lab_ca: LabCA, statuses: list[int]) -> ReportCollector:
    return ReportCollector(lab_ca.issue("127.0.0.1").server_context(), statuses=statuses)


async def test_rpt11_post_gzip_with_media_type(lab_ca: LabCA, http: httpx.AsyncClient) -> None:
    body = gzip.compress(b'{"report-id": "x"}')
    async with collector_for(lab_ca, [201]).running() as collector:
        status = await post_report(collector.url("/v1/tlsrpt"), body, client=http)
    assert status == 201
    (got,) = collector.received
    assert got.method == "POST"
    assert got.path == "/v1/tlsrpt"
    assert got.headers["content-type"] == MEDIA_TYPE_GZIP
    assert got.body == body


@pytest.mark.parametrize("status", [500, 404, 302, 400])
async def test_rpt11_only_2xx_is_success(
    lab_ca: LabCA, http: httpx.AsyncClient, status: int
) -> None:
    async with collector_for(lab_ca, [status]).running() as collector:
        with pytest.raises(HttpsDeliveryError) as caught:
            await post_report(collector.url("/"), b"x", client=http)
    assert caught.value.status == status


async def test_rpt11_transport_errors_translated(lab_ca: LabCA, http: httpx.AsyncClient) -> None:
    collector = collector_for(lab_ca, [200])
    async with collector.running():
        url = collector.url("/")
    with pytest.raises(HttpsDeliveryError):  # nobody listens any more
        await post_report(url, b"x", client=http)
    rogue = ReportCollector(lab_ca.untrusted().issue("127.0.0.1").server_context())
    async with rogue.running():
        with pytest.raises(HttpsDeliveryError):  # certificate not trusted
            await post_report(rogue.url("/"), b"x", client=http)


def test_rpt12_backoff_is_exponential_and_ends_after_24h() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [300.0, 600.0, 1200.0, 2400.0]
    assert retry_delay(20) == 4 * 3600.0
    first, now, attempts, times = 1000.0, 1000.0, 0, []
    while True:
        attempts += 1
        at = next_retry_at(first, attempts, now)
        if at is None:
            break
        times.append(at)
        now = at
    assert times[-1] <= first + RETRY_WINDOW
    assert times[-1] + retry_delay(attempts) > first + RETRY_WINDOW
    assert len(times) > 5


def test_rpt03_next_run_after_midnight_with_random_delay() -> None:
    rng = random.Random(7)
    noon = NEXT_MIDNIGHT - 12 * 3600
    runs = [next_run(noon, 3600.0, rng) for _ in range(50)]
    assert all(NEXT_MIDNIGHT <= r <= NEXT_MIDNIGHT + 3600 for r in runs)
    assert len(set(runs)) > 1
    assert next_run(noon, 0, rng) == NEXT_MIDNIGHT
    assert report_day(runs[0]) == DAY


async def test_rpt12_https_500_then_201_delivered_on_retry(
    lab_ca: LabCA, lab_dns: LabDns, http: httpx.AsyncClient
) -> None:
    store = filled_store()
    async with collector_for(lab_ca, [500, 201]).running() as collector:
        lab_dns.add("_smtp._tls.example.org", "TXT", f"v=TLSRPTv1; rua={collector.url('/r')}")
        clients = Clients(resolver=resolver_for(lab_dns), http=http)
        t0 = NEXT_MIDNIGHT + 600
        first = await send_day(DAY, store, settings=SETTINGS, clients=clients, now=t0)
        by_domain = {s.domain: s for s in first}
        failed = by_domain["example.org"]
        assert failed.status == "pending"
        assert failed.next_retry == t0 + 300
        assert by_domain["plain.example"].status == "no-record"  # no _smtp._tls: no report
        assert await retry_due(store, settings=SETTINGS, clients=clients, now=t0 + 299) == []
        (done,) = await retry_due(store, settings=SETTINGS, clients=clients, now=t0 + 300)
    assert done.status == "delivered"
    assert done.attempts == 2
    assert [r.status for r in collector.received] == [500, 201]
    first_body, second_body = (r.report() for r in collector.received)
    assert first_body == second_body  # the same report, same report-id, on retry
    assert second_body["report-id"] == done.report_id
    assert second_body["policies"][0]["policy"]["policy-domain"] == "example.org"
    again = await send_day(DAY, store, settings=SETTINGS, clients=clients, now=t0 + 400)
    assert {s.domain: s.status for s in again}["example.org"] == "delivered"
    assert len(collector.received) == 2  # nothing sent twice


async def test_rpt02_delivered_when_any_destination_accepts(
    lab_ca: LabCA, lab_dns: LabDns, http: httpx.AsyncClient
) -> None:
    store = filled_store()
    mails: list[tuple[str, list[str], bytes]] = []

    async def submit_mail(mail_from: str, rcpt_to: list[str], message: bytes) -> None:
        mails.append((mail_from, rcpt_to, message))

    async with collector_for(lab_ca, [503]).running() as collector:
        lab_dns.add(
            "_smtp._tls.example.org",
            "TXT",
            f"v=TLSRPTv1; rua={collector.url('/r')},mailto:rua%2Bx@example.org",
        )
        clients = Clients(resolver=resolver_for(lab_dns), http=http, submit_mail=submit_mail)
        sent = await send_day(DAY, store, settings=SETTINGS, clients=clients, now=NEXT_MIDNIGHT)
    done = {s.domain: s for s in sent}["example.org"]
    assert done.status == "delivered"
    assert done.destinations_done == ("mailto:rua%2Bx@example.org",)
    assert len(collector.received) == 1  # https was tried too
    ((mail_from, rcpt_to, message),) = mails
    assert mail_from == "t@reporter.example"
    assert rcpt_to == ["rua+x@example.org"]
    msg = email.message_from_bytes(message, policy=email.policy.default)
    assert msg["TLS-Report-Domain"] == "example.org"
    assert msg["TLS-Required"] == "No"


async def test_lookup_servfail_is_retried(lab_dns: LabDns, http: httpx.AsyncClient) -> None:
    store = filled_store()
    lab_dns.servfail("_smtp._tls.example.org")
    clients = Clients(resolver=resolver_for(lab_dns), http=http)
    sent = await send_day(DAY, store, settings=SETTINGS, clients=clients, now=NEXT_MIDNIGHT)
    failed = {s.domain: s for s in sent}["example.org"]
    assert failed.status == "pending"
    assert failed.next_retry == NEXT_MIDNIGHT + 300


async def test_report_sender_runs_daily_and_retries(
    lab_ca: LabCA, lab_dns: LabDns, http: httpx.AsyncClient
) -> None:
    store = filled_store()
    clock = [NEXT_MIDNIGHT + 5.0]
    slept: list[float] = []

    async with collector_for(lab_ca, [500, 201]).running() as collector:
        lab_dns.add("_smtp._tls.example.org", "TXT", f"v=TLSRPTv1; rua={collector.url('/r')}")

        async def fake_sleep(seconds: float) -> None:
            slept.append(seconds)
            clock[0] += seconds
            if any(r.status == 201 for r in collector.received) or len(slept) > 50:
                raise asyncio.CancelledError

        sender = ReportSender(
            store,
            settings=SETTINGS,
            clients=Clients(resolver=resolver_for(lab_dns), http=http),
            clock=lambda: clock[0],
            sleep=fake_sleep,
            rng=random.Random(3),
            max_delay=120.0,
            poll=3600.0,
        )
        with pytest.raises(asyncio.CancelledError):
            await sender.run()
    assert [r.status for r in collector.received] == [500, 201]
    sent = store.get_sent(DAY, "example.org")
    assert sent is not None
    assert sent.status == "delivered"
    assert NEXT_MIDNIGHT <= sent.first_attempt <= NEXT_MIDNIGHT + 120  # type: ignore[operator]
    assert 300.0 in [round(s) for s in slept] or sum(slept) >= 300.0
    report = json.loads(gzip.decompress(collector.received[1].body))
    assert report["date-range"]["start-datetime"] == "2026-11-28T00:00:00Z"


async def test_rpt10_report_mail_goes_to_submitter_with_tls_required_no(
    lab_dns: LabDns, http: httpx.AsyncClient
) -> None:
    """The relay's submit_mail queues it without MTA-STS/DANE; the mail says so itself too."""
    store = filled_store()
    mails: list[bytes] = []

    async def submit_mail(mail_from: str, rcpt_to: list[str], message: bytes) -> None:
        mails.append(message)

    lab_dns.add("_smtp._tls.example.org", "TXT", "v=TLSRPTv1; rua=mailto:rua@example.org")
    clients = Clients(resolver=resolver_for(lab_dns), http=http, submit_mail=submit_mail)
    sent = await send_day(DAY, store, settings=SETTINGS, clients=clients, now=NEXT_MIDNIGHT)
    assert {s.domain: s.status for s in sent}["example.org"] == "delivered"
    (message,) = mails
    msg = email.message_from_bytes(message, policy=email.policy.default)
    assert msg["TLS-Required"] == "No"


async def test_mailto_submit_failure_is_retried(lab_dns: LabDns, http: httpx.AsyncClient) -> None:
    store = filled_store()

    async def broken(mail_from: str, rcpt_to: list[str], message: bytes) -> None:
        raise OSError("spool full")

    lab_dns.add("_smtp._tls.example.org", "TXT", "v=TLSRPTv1; rua=mailto:rua@example.org")
    clients = Clients(resolver=resolver_for(lab_dns), http=http, submit_mail=broken)
    sent = await send_day(DAY, store, settings=SETTINGS, clients=clients, now=NEXT_MIDNIGHT)
    failed = {s.domain: s for s in sent}["example.org"]
    assert failed.status == "pending"
    assert "spool full" in failed.last_error
