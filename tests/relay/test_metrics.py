"""The metrics endpoint of a real relay run: names, series, and values a dashboard relies on."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import smtplib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from lab.mx import CertKind
from lab.world import LabWorld, free_port, wait_until
from relay.app import Relay
from relay.metrics import Metrics, start_metrics_server
from relay.reports import CountedReportStore
from relay.version import stsguard_version
from tlsrpt_emit.store import MemoryReportStore, SentReport


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    async with LabWorld(tmp_path / "world").running() as w:
        yield w


def send(listen: tuple[str, int], rcpt: str) -> None:
    with smtplib.SMTP(*listen, timeout=10) as client:
        client.sendmail("alice@upstream.test", [rcpt], b"Subject: hi\r\n\r\nbody\r\n")


def scrape(listen: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{listen}/metrics", timeout=10) as response:
        body: str = response.read().decode()
        return body


def sample(body: str, name: str, labels: str = "") -> float:
    line = re.search(rf"^{re.escape(name + labels)} (\S+)$", body, re.MULTILINE)
    assert line, f"{name}{labels} not in:\n{body}"
    return float(line.group(1))


async def test_metrics_of_a_real_run(world: LabWorld, tmp_path: Path) -> None:
    await world.add_mx("mx.good.example", "127.0.0.21", cert=CertKind.GOOD)
    await world.add_mx("mx.expired.example", "127.0.0.22", cert=CertKind.EXPIRED)
    world.publish_mx("good.example", [(10, "mx.good.example")])
    world.publish_mx("expired.example", [(10, "mx.expired.example")])
    world.publish_policy("good.example", "enforce", ["mx.good.example"])
    world.publish_policy("expired.example", "enforce", ["mx.expired.example"])
    listen = f"127.0.0.1:{free_port()}"
    relay = Relay(world.relay_config(tmp_path / "state", relay={"metrics_listen": listen}))
    async with relay.running():
        await asyncio.to_thread(send, relay.listen_address, "bob@good.example")
        await asyncio.to_thread(send, relay.listen_address, "carol@expired.example")
        await wait_until(lambda: relay.metrics.value("stsguard_delivered_total", {"tls": "yes"}))
        await wait_until(lambda: relay.metrics.value("stsguard_deferred_total", _expired()) > 0)
        # The next scan of the spool sees the deferred message.
        await wait_until(
            lambda: relay.metrics.value("stsguard_queue_messages", {"state": "deferred"}) == 1
        )
        body = await asyncio.to_thread(scrape, listen)
    assert "_created" not in body
    for name in re.findall(r"^# TYPE (\S+) counter$", body, re.MULTILINE):
        assert name.endswith("_total") or f"{name}_total" in body, name
    assert sample(body, "stsguard_accepted_total") == 2
    assert sample(body, "stsguard_delivered_total", '{tls="yes"}') == 1
    assert sample(body, "stsguard_deferred_total", '{reason="certificate-expired"}') == 1
    assert sample(body, "stsguard_policy_cache_misses_total") >= 2
    assert sample(body, "stsguard_delivery_delay_seconds_count") == 1
    assert sample(body, "stsguard_delivery_delay_seconds_bucket", '{le="+Inf"}') == 1
    assert sample(body, "stsguard_queue_messages", '{state="deferred"}') == 1
    assert sample(body, "stsguard_queue_messages", '{state="active"}') == 0
    assert sample(body, "stsguard_queue_size") == 1
    assert sample(body, "stsguard_queue_oldest_message_age_seconds") >= 0
    assert re.search(
        rf'^stsguard_build_info{{python="[\d.]+",version="{re.escape(stsguard_version())}"}} 1\.0$',
        body,
        re.MULTILINE,
    )
    assert sample(body, "stsguard_tlsrpt_reports_sent_total") == 0
    assert sample(body, "stsguard_tlsrpt_reports_failed_total") == 0


def _expired() -> dict[str, str]:
    return {"reason": "certificate-expired"}


def test_queue_state_and_oldest_age_at_scrape_time() -> None:
    metrics = Metrics()
    metrics.set_queue({"active": 1, "deferred": 1, "hold": 0}, 40.0, clock=lambda: 100.0)
    assert metrics.value("stsguard_queue_oldest_message_age_seconds") == 60.0
    assert metrics.value("stsguard_queue_size") == 2
    assert metrics.value("stsguard_queue_messages", {"state": "hold"}) == 0
    metrics.set_queue({}, None)
    assert metrics.value("stsguard_queue_oldest_message_age_seconds") == 0.0
    assert metrics.value("stsguard_queue_messages", {"state": "deferred"}) == 0
    metrics.observe_delivered(received_at=10.0, now=12.5, count=2)
    assert metrics.value("stsguard_delivery_delay_seconds_bucket", {"le": "5.0"}) == 2
    assert metrics.value("stsguard_delivery_delay_seconds_bucket", {"le": "1.0"}) == 0


def test_report_outcomes_counted_as_the_sender_records_them() -> None:
    metrics = Metrics()
    store = CountedReportStore(MemoryReportStore(), metrics)
    day = dt.date(2026, 11, 30)
    base = SentReport(day=day, domain="example.org", report_id="r1")
    store.put_sent(replace(base, status="pending", attempts=1, last_error="503 from rua"))
    store.put_sent(replace(base, status="delivered", attempts=2))
    store.put_sent(replace(base, domain="other.example", status="no-record", last_error="none"))
    store.put_sent(replace(base, domain="gone.example", status="failed", last_error="timeout"))
    assert metrics.value("stsguard_tlsrpt_reports_sent_total") == 1
    assert metrics.value("stsguard_tlsrpt_reports_failed_total") == 2
    got = store.get_sent(day, "example.org")  # the rest of the store as it was
    assert got is not None
    assert got.status == "delivered"


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
def test_metrics_answer_on_metrics_only(listen: str) -> None:
    """prometheus_client's own server answered every path with the metrics."""
    metrics = Metrics()
    metrics.accepted.inc()
    try:
        server = start_metrics_server(listen, metrics.registry)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    host, port = server.server_address[:2]
    base = f"http://{'[' + str(host) + ']' if ':' in str(host) else host}:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/metrics", timeout=10) as response:
            assert "stsguard_accepted_total 1.0" in response.read().decode()
        for path in ("/", "/favicon.ico", "/metrics/x", "/admin", "/METRICS"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                opener.open(f"{base}{path}", timeout=10)
            assert caught.value.code == 404, path
            caught.value.close()
    finally:
        server.shutdown()
        server.server_close()
