"""`stsguard relay` with `[tlsrpt_inbound]`: the endpoint is served, a POSTed report is kept, its
alerts fire once (a warning line, a counter, one notice mail delivered through the relay), and a
Maildir dropped into is read."""

from __future__ import annotations

import asyncio
import gzip
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import structlog
from structlog.testing import LogCapture

from lab.world import LabWorld, free_port, wait_until
from relay.app import Relay

PEERS = Path(__file__).parent.parent / "tlsrpt_emit" / "peer_reports"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    async with LabWorld(tmp_path / "world").running() as w:
        yield w


async def test_reports_are_received_and_alert_once(world: LabWorld, tmp_path: Path) -> None:
    mx = await world.add_mx("mx1.ops.example", "127.0.0.31")
    world.publish_mx("ops.example", [(10, "mx1.ops.example")])
    cert = world.ca.issue("reports.example.com", "127.0.0.1")
    maildir = tmp_path / "Maildir"
    port = free_port()
    config = world.relay_config(
        tmp_path / "state",
        tlsrpt_inbound={
            "listen": f"127.0.0.1:{port}",
            "tls_cert_file": str(cert.cert_file),
            "tls_key_file": str(cert.key_file),
            "domains": ["example.com", "cardinalhealth.ca"],
            "maildir": str(maildir),
            "notify": "ops@ops.example",
        },
    )
    capture = LogCapture()
    structlog.configure(processors=[capture])
    relay = Relay(config)
    relay.inbound.maildir_interval = 0.2
    body = gzip.compress((PEERS / "shape-microsoft-tlsa.json").read_bytes())
    try:
        async with relay.running():
            async with httpx.AsyncClient(
                verify=world.ca.client_context(), timeout=10.0, trust_env=False
            ) as http:
                url = f"https://127.0.0.1:{port}/.well-known/tlsrpt"
                headers = {"content-type": "application/tlsrpt+gzip"}
                first = await http.post(url, content=body, headers=headers)
                again = await http.post(url, content=body, headers=headers)
            assert (first.status_code, again.status_code) == (201, 200)
            for sub in ("new", "cur", "tmp"):
                (maildir / sub).mkdir(parents=True)
            shutil.copy(
                PEERS / "parsedmarc-google.com_smtp_tls_report.eml", maildir / "new" / "1.x"
            )
            await wait_until(lambda: (maildir / "cur" / "1.x:2,S").exists(), 10.0)
            await wait_until(lambda: len(mx.messages) == 2, 20.0)
            await asyncio.sleep(0.5)
    finally:
        structlog.reset_defaults()
    alerts = [e for e in capture.entries if e["event"] == "tlsrpt_inbound.alert"]
    assert {(e["domain"], e["kind"]) for e in alerts} == {
        ("example.com", "new-result-type"),
        ("example.com", "failure-share"),
    }
    assert all(e["log_level"] == "warning" for e in alerts)
    # One notice per alert kind, through the relay to the notify address; none for the repeat.
    assert [m.rcpt_tos for m in mx.messages] == [("ops@ops.example",)] * 2
    assert all(b"TLS reports for example.com" in m.data for m in mx.messages)
    metrics = relay.metrics
    assert metrics.value("stsguard_tlsrpt_alerts_total", {"kind": "new-result-type"}) == 1
    assert metrics.value("stsguard_tlsrpt_received_total", {"via": "https", "outcome": "new"}) == 1
    assert (
        metrics.value("stsguard_tlsrpt_received_total", {"via": "https", "outcome": "duplicate"})
        == 1
    )
    assert (
        metrics.value("stsguard_tlsrpt_received_total", {"via": "maildir", "outcome": "new"}) == 1
    )
    relay.close()
