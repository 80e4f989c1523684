"""The https and mailto rua destinations are someone else's: a real hostile HTTPS endpoint on
loopback, rua hosts known only to the lab DNS, and mailto URIs that smuggle header lines."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from structlog.testing import capture_logs

from lab.collector import ReportCollector
from lab.dns import LabDns
from lab.pki import LabCA
from tests.tlsrpt_emit.sessions import DAY, filled_store, resolver_for
from tlsrpt_emit.deliver import MAX_RESPONSE_BODY, deliver_report, post_report, report_mailbox
from tlsrpt_emit.errors import HttpsDeliveryError, MailDeliveryError
from tlsrpt_emit.schedule import Clients, ReportSettings, build_day_reports

HUGE = 400 * 1024 * 1024
CHUNK = 64 * 1024


@dataclass
class Endpoint:
    """What the hostile endpoint saw: requests answered and bytes of body it got out."""

    port: int = 0
    requests: int = 0
    body_bytes_sent: int = 0
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)


Behaviour = Callable[[asyncio.StreamWriter, Endpoint], Awaitable[None]]


async def _huge(writer: asyncio.StreamWriter, seen: Endpoint) -> None:
    """A 200 with a 400 MB body, written as fast as the client takes it."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE)
    block = b"x" * CHUNK
    while seen.body_bytes_sent < HUGE:
        writer.write(block)
        await writer.drain()
        seen.body_bytes_sent += CHUNK


async def _drip(writer: asyncio.StreamWriter, seen: Endpoint) -> None:
    """A 200 whose body comes one byte at a time, each well within any read timeout."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    while True:
        writer.write(b"x")
        await writer.drain()
        seen.body_bytes_sent += 1
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def hostile_endpoint(context: ssl.SSLContext, behave: Behaviour) -> AsyncIterator[Endpoint]:
    seen = Endpoint()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            seen.requests += 1
            await behave(writer, seen)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            seen.closed_by_client.set()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    seen.port = server.sockets[0].getsockname()[1]
    try:
        yield seen
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def http(lab_ca: LabCA) -> AsyncIterator[httpx.AsyncClient]:
    # The relay's own settings: generous per-read timeouts, so only the total deadline can act.
    async with httpx.AsyncClient(
        verify=lab_ca.client_context(), trust_env=False, timeout=60.0
    ) as client:
        yield client


async def test_a_huge_reply_is_read_up_to_the_cap_and_dropped(
    lab_ca: LabCA, http: httpx.AsyncClient
) -> None:
    context = lab_ca.issue("127.0.0.1").server_context()
    async with hostile_endpoint(context, _huge) as seen:
        status = await post_report(f"https://127.0.0.1:{seen.port}/r", b"gz", client=http)
        await asyncio.wait_for(seen.closed_by_client.wait(), 30)
    assert status == 200
    assert seen.requests == 1
    # The client hung up after the cap; what the server got out is socket buffers, not 400 MB.
    assert seen.body_bytes_sent < 32 * 1024 * 1024 < HUGE
    assert MAX_RESPONSE_BODY == 64 * 1024


async def test_a_one_byte_per_tick_endpoint_is_cut_off_by_post_timeout(
    lab_ca: LabCA, http: httpx.AsyncClient
) -> None:
    context = lab_ca.issue("127.0.0.1").server_context()
    async with hostile_endpoint(context, _drip) as seen:
        with pytest.raises(HttpsDeliveryError, match=r"no complete answer within 0\.5 s"):
            await post_report(f"https://127.0.0.1:{seen.port}/r", b"gz", client=http, timeout=0.5)
        await asyncio.wait_for(seen.closed_by_client.wait(), 30)
    assert seen.body_bytes_sent < 1_000_000


async def test_rua_host_is_resolved_by_the_given_resolver_with_sni_and_cert_check(
    lab_ca: LabCA, lab_dns: LabDns, http: httpx.AsyncClient
) -> None:
    """`.test` names exist only in the lab DNS: the system resolver could not find this host."""
    name = "rua.reports.test"
    lab_dns.add(name, "A", "127.0.0.1")
    collector = ReportCollector(lab_ca.issue(name).server_context(), host_name=name)
    async with collector.running():
        status = await post_report(
            collector.url("/v1"), b"gz", client=http, resolver=resolver_for(lab_dns)
        )
        with pytest.raises(HttpsDeliveryError, match="no resolver"):
            await post_report(collector.url("/v1"), b"gz", client=http)
    assert status == 200
    (got,) = collector.received
    assert got.headers["host"] == f"{name}:{collector.port}"
    assert got.path == "/v1"


async def test_rua_certificate_for_another_name_is_refused(
    lab_ca: LabCA, lab_dns: LabDns, http: httpx.AsyncClient
) -> None:
    lab_dns.add("rua.reports.test", "A", "127.0.0.1")
    collector = ReportCollector(
        lab_ca.issue("other.reports.test").server_context(), host_name="rua.reports.test"
    )
    async with collector.running():
        with pytest.raises(HttpsDeliveryError):
            await post_report(
                collector.url("/"), b"gz", client=http, resolver=resolver_for(lab_dns)
            )
    assert collector.received == []


async def test_rua_host_without_address_fails_cleanly(
    lab_dns: LabDns, http: httpx.AsyncClient
) -> None:
    with pytest.raises(HttpsDeliveryError, match="no A or AAAA record"):
        await post_report(
            "https://nowhere.reports.test/", b"gz", client=http, resolver=resolver_for(lab_dns)
        )


@pytest.mark.parametrize(
    "uri",
    [
        "mailto:x%0D%0ABcc:%20spy@evil.test@good.test",
        "mailto:x%0Abcc@good.test",
        "mailto:a@good.test%0D%0ABcc:%20spy@evil.test",
        "mailto:a%00b@good.test",
        "mailto:a@good.test%2Cspy@evil.test",
        "mailto:a%20b@good.test",
        "mailto:a@b@good.test",
        "mailto:%3Cspy@evil.test%3E",
        "mailto:good.test",
        "mailto:a@good.test%E2%80%A8",
        "mailto:b%C3%B8b@good.test",  # no SMTPUTF8 for report mail
        "mailto:x%0@p%ADy0ees.st",  # found by fuzz_tlsrpt_record: not UTF-8 once decoded
    ],
)
def test_mailto_that_is_not_one_clean_address_is_refused(uri: str) -> None:
    with pytest.raises(MailDeliveryError) as caught:
        report_mailbox(uri)
    assert caught.value.temporary is False


@pytest.mark.parametrize(
    ("uri", "address"),
    [
        ("mailto:tlsrpt@good.test", "tlsrpt@good.test"),
        ("mailto:tls-rpt+x@Good.Test?subject=hi", "tls-rpt+x@Good.Test"),
        ("mailto:a%2Bb@good.test", "a+b@good.test"),
        ("mailto:a@[127.0.0.1]", "a@[127.0.0.1]"),
    ],
)
def test_mailto_clean_addresses_pass(uri: str, address: str) -> None:
    assert report_mailbox(uri) == address


async def test_injecting_mailto_is_skipped_with_a_log_line_and_others_still_get_it(
    lab_dns: LabDns, http: httpx.AsyncClient
) -> None:
    store = filled_store()
    settings = ReportSettings(organization_name="Org", contact_info="mailto:t@reporter.example")
    (report, *_) = build_day_reports(store, DAY, settings)
    submitted: list[tuple[str, list[str], bytes]] = []

    async def submit(mail_from: str, rcpts: list[str], data: bytes) -> None:
        submitted.append((mail_from, rcpts, data))

    bad = "mailto:x%0D%0ABcc:%20spy@evil.test@good.test"
    clients = Clients(resolver_for(lab_dns), http, submit_mail=submit)
    with capture_logs() as logs:
        outcome = await deliver_report(
            report,
            b"gz",
            [bad, "mailto:tlsrpt@good.test"],
            client=clients.http,
            submit_mail=clients.submit_mail,
            resolver=clients.resolver,
            mail_from="t@reporter.example",
            now=1e9,
        )
    assert outcome.accepted == ("mailto:tlsrpt@good.test",)
    assert [uri for uri, _ in outcome.errors] == [bad]
    assert [rcpts for _, rcpts, _ in submitted] == [["tlsrpt@good.test"]]
    (_, _, data) = submitted[0]
    assert b"spy@evil.test" not in data
    assert b"\nBcc" not in data.replace(b"\r\n", b"\n")
    skipped = [e for e in logs if e["event"] == "tlsrpt.rua_skipped"]
    assert len(skipped) == 1
    assert skipped[0]["log_level"] == "warning"


async def test_send_day_reaches_a_rua_host_known_only_to_the_lab_dns(
    lab_ca: LabCA, lab_dns: LabDns, http: httpx.AsyncClient
) -> None:
    """The scheduler hands its resolver to the POST: the rua host needs no system resolver."""
    from tlsrpt_emit.schedule import send_day

    name = "collector.reports.test"
    lab_dns.add(name, "A", "127.0.0.1")
    collector = ReportCollector(lab_ca.issue(name).server_context(), host_name=name)
    settings = ReportSettings(organization_name="Org", contact_info="mailto:t@reporter.example")
    async with collector.running():
        lab_dns.add("_smtp._tls.example.org", "TXT", f"v=TLSRPTv1; rua={collector.url('/r')}")
        clients = Clients(resolver_for(lab_dns), http, post_timeout=30)
        sent = await send_day(DAY, filled_store(), settings=settings, clients=clients, now=2e9)
    assert {s.domain: s.status for s in sent}["example.org"] == "delivered"
    (got,) = collector.received
    assert got.report()["policies"][0]["policy"]["policy-domain"] == "example.org"
