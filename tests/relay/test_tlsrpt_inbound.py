"""The https endpoint for reports about our domains, against real TLS on loopback: a report is
kept once (201, then 200), hostile POSTs get their status (gzip bomb, wrong type, other domains,
GET, too many, too slow), and the Maildir reader takes a real report mail once."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from lab.pki import LabCA
from relay.config import TlsrptInboundConfig
from relay.inbound.https import ReportEndpoint
from relay.inbound.maildir import scan_maildir
from relay.inbound.rate import RateLimit
from relay.inbound.service import InboundReports
from relay.inbound.taking import ReportKeeper
from relay.metrics import Metrics
from relay.state.database import SqliteDatabase
from relay.state.received_store import SqlReceivedReportStore

PEERS = Path(__file__).parent.parent / "tlsrpt_emit" / "peer_reports"
MAIL_RU = (PEERS / "parsedmarc-mail.ru.json").read_bytes()
GZ = "application/tlsrpt+gzip"


@pytest.fixture
def store(tmp_path: Path) -> SqlReceivedReportStore:
    return SqlReceivedReportStore(SqliteDatabase(tmp_path / "state.sqlite3"))


@pytest.fixture
async def endpoint(lab_ca: LabCA, store: SqlReceivedReportStore) -> AsyncIterator[ReportEndpoint]:
    cert = lab_ca.issue("reports.example.com", "127.0.0.1")
    server = ReportEndpoint(
        ("127.0.0.1", 0),
        cert.server_context(),
        ReportKeeper(store, metrics=Metrics()),
        ["example.com"],
        rate=RateLimit(per_minute=1, burst=12),
        request_timeout=0.5,
    )
    async with server.running():
        yield server


def client(lab_ca: LabCA) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=lab_ca.client_context(), timeout=10.0, trust_env=False)


async def post(
    lab_ca: LabCA, server: ReportEndpoint, body: bytes, content_type: str = GZ
) -> httpx.Response:
    async with client(lab_ca) as http:
        return await http.post(
            f"https://127.0.0.1:{server.port}/any/path/the-operator-chose",
            content=body,
            headers={"content-type": content_type},
        )


async def test_a_report_is_kept_once(
    lab_ca: LabCA, endpoint: ReportEndpoint, store: SqlReceivedReportStore
) -> None:
    first = await post(lab_ca, endpoint, gzip.compress(MAIL_RU))
    assert first.status_code == 201, first.text
    again = await post(lab_ca, endpoint, MAIL_RU, "application/tlsrpt+json")
    assert again.status_code == 200  # any 2xx: the sender stops retrying (RFC 8460 5.4)
    assert store.documents(0.0) == [MAIL_RU]


async def test_hostile_posts(lab_ca: LabCA, endpoint: ReportEndpoint) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(packer.compress(b"\0" * 1024 * 1024) for _ in range(100)) + packer.flush()
    assert (await post(lab_ca, endpoint, bomb)).status_code == 413
    assert (await post(lab_ca, endpoint, MAIL_RU, "application/json")).status_code == 415
    other = MAIL_RU.replace(b'"example.com"', b'"victim.example"')
    assert (await post(lab_ca, endpoint, gzip.compress(other))).status_code == 403
    assert (await post(lab_ca, endpoint, b"\x1f\x8bnot gzip")).status_code == 400
    assert (await post(lab_ca, endpoint, b"x" * (2 * 1024 * 1024))).status_code == 413
    async with client(lab_ca) as http:
        got = await http.get(f"https://127.0.0.1:{endpoint.port}/")
    assert (got.status_code, got.headers["allow"]) == (405, "POST")


async def test_too_many_from_one_client(lab_ca: LabCA, endpoint: ReportEndpoint) -> None:
    statuses = [(await post(lab_ca, endpoint, b"{}", GZ)).status_code for _ in range(13)]
    assert statuses[:12] == [400] * 12
    assert statuses[12] == 429


async def test_a_slow_client_is_cut_off(lab_ca: LabCA, endpoint: ReportEndpoint) -> None:
    ctx = lab_ca.client_context()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", endpoint.port, ssl=ctx, server_hostname="reports.example.com"
    )
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/tlsrpt+gzip\r\n")
    await writer.drain()  # ... and the rest never comes
    answer = await asyncio.wait_for(reader.read(), 10.0)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_maildir_takes_a_real_report_mail_once(
    tmp_path: Path, store: SqlReceivedReportStore
) -> None:
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    shutil.copy(PEERS / "parsedmarc-google.com_smtp_tls_report.eml", maildir / "new" / "1.a.host")
    (maildir / "new" / "2.b.host").write_bytes(b"Subject: hello\r\n\r\nnot a report\r\n")
    keeper = ReportKeeper(store)
    result = scan_maildir(maildir, keeper, ["cardinalhealth.ca"])
    assert (result.new, result.duplicates, result.refused) == (1, 0, 1)
    assert sorted(p.name for p in (maildir / "cur").iterdir()) == ["1.a.host:2,S", "2.b.host:2,F"]
    assert list((maildir / "new").iterdir()) == []
    shutil.copy(PEERS / "parsedmarc-google.com_smtp_tls_report.eml", maildir / "new" / "3.c.host")
    assert scan_maildir(maildir, keeper, ["cardinalhealth.ca"]).duplicates == 1
    assert len(store.documents(0.0)) == 1


def test_the_service_without_a_certificate_is_a_config_error(tmp_path: Path) -> None:
    from relay.errors import ConfigError

    cfg = TlsrptInboundConfig(
        listen="127.0.0.1:1",
        tls_cert_file=str(tmp_path / "missing.pem"),
        tls_key_file=str(tmp_path / "missing.key"),
        domains=("example.com",),
    )
    with pytest.raises(ConfigError, match="cannot load certificate"):
        InboundReports(cfg, SqlReceivedReportStore(SqliteDatabase(tmp_path / "s.sqlite3")))


def test_alerts_fire_once_per_domain_kind_and_day() -> None:
    from relay.inbound.alerting import Alerter
    from tlsrpt_emit.alerts import Alert
    from tlsrpt_emit.inbound import MemoryReceivedReportStore, accept_report

    store = MemoryReceivedReportStore()
    told: list[Alert] = []
    now = [1_796_112_000.0]  # 2026-12-01 08:00 UTC: the day after the sample's range
    keeper = ReportKeeper(store, metrics=Metrics())
    keeper.listeners.append(
        Alerter(
            store,
            ("example.com",),
            days=30,
            failure_share=0.05,
            notify=told.append,
            clock=lambda: now[0],
        )
    )
    data = (PEERS / "shape-microsoft-tlsa.json").read_bytes()
    for n in range(3):  # three reports (other ids) that day: new types and high share once each
        doc = data.replace(b"134091520000000001", str(n).encode())
        keeper.keep(accept_report(doc, ["example.com"], via="https", now=now[0]))
    assert sorted(str(a.kind) for a in told) == ["failure-share", "new-result-type"]
    now[0] += 86400  # the next day: the share is still high, the types are known by now
    doc = data.replace(b"134091520000000001", b"next-day")
    keeper.keep(accept_report(doc, ["example.com"], via="https", now=now[0]))
    assert sorted(str(a.kind) for a in told) == [
        "failure-share",
        "failure-share",
        "new-result-type",
    ]
