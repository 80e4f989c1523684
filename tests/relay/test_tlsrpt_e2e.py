"""A day of relay traffic becomes TLS-RPT reports that parsedmarc reads, delivered by https and by
DKIM-signed mail through the relay's own queue; the report mail itself is not counted (RPT-10)."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import gzip
import json
import smtplib
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import dkim
import httpx
from parsedmarc import parse_smtp_tls_report_json

from lab.collector import ReportCollector
from lab.mx import CertKind
from lab.world import LabWorld, wait_until
from relay.app import Relay
from relay.config import Config
from relay.reports import report_settings
from tests.tlsrpt_emit.strict import check_report
from tests.tlsrpt_emit.test_report import lab_dnsfunc, make_dkim_key
from tlsrpt_emit.schedule import Clients, send_day
from tlsrpt_emit.store import SentReport


def send(config: Config, rcpt: str) -> None:
    msg = EmailMessage()
    msg["From"] = "app@upstream.test"
    msg["To"] = rcpt
    msg["Subject"] = "tlsrpt day"
    msg.set_content("hi\n")
    host, port = config.relay.listen_address
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.sendmail("app@upstream.test", [rcpt], msg.as_bytes(policy=SMTP))


async def send_todays_reports(
    relay: Relay, config: Config, within: float = 15.0
) -> tuple[dt.date, list[SentReport]]:
    """Send today's TLS-RPT reports now, once the queue is empty (the tests do not wait for
    midnight). A message leaves the queue after its attempt was reported: by then every session
    result is in the sink, which is flushed to the report store before the day is sent."""
    await wait_until(lambda: not relay.spool.list(), within)
    relay.sink.flush()
    day = dt.datetime.now(dt.UTC).date()
    async with httpx.AsyncClient(verify=relay.ssl_context) as http:
        sent = await send_day(
            day,
            relay.report_store,
            settings=report_settings(config),
            clients=Clients(relay.resolver, http, submit_mail=relay.submit_mail),
            now=dt.datetime.now(dt.UTC).timestamp(),
        )
    return day, sent


async def test_rpt_day_of_sessions_reported_by_https_and_dkim_mail(tmp_path: Path) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        good = await world.add_mx("mx1.example.org", "127.0.0.11", cert=CertKind.GOOD)
        world.publish_mx("example.org", [(10, "mx1.example.org")])
        world.publish_policy("example.org", "testing", ["mx1.example.org"])
        bad = await world.add_mx("mx1.testing.example", "127.0.0.12", cert=CertKind.EXPIRED)
        world.publish_mx("testing.example", [(10, "mx1.testing.example")])
        world.publish_policy("testing.example", "testing", ["mx1.testing.example"])
        # Where the mailto reports go: a domain without MTA-STS, its MX with a good certificate.
        rua_mx = await world.add_mx("mx.rua.example", "127.0.0.13", cert=CertKind.GOOD)
        world.publish_mx("rua.example", [(10, "mx.rua.example")])
        collector = ReportCollector(world.ca.issue("127.0.0.1").server_context(), statuses=[201])
        await world.keep(collector.running())
        for domain in ("example.org", "testing.example"):
            world.publish_tlsrpt(domain, f"mailto:reports@rua.example,{collector.url('/tlsrpt')}")
        pem, public = make_dkim_key()
        key_file = tmp_path / "dkim.pem"
        key_file.write_bytes(pem)
        text = f"v=DKIM1; k=rsa; s=tlsrpt; p={public}"
        chunks = tuple(text[i : i + 255] for i in range(0, len(text), 255))
        world.dns.set("sel._domainkey.lab.test", "TXT", [chunks])
        config = world.relay_config(
            tmp_path / "state",
            tlsrpt={
                "enabled": False,  # the test sends the day itself instead of waiting for midnight
                "dkim_domain": "lab.test",
                "dkim_selector": "sel",
                "dkim_key_file": str(key_file),
            },
        )
        relay = Relay(config)
        async with relay.running():
            for rcpt in ("a@example.org", "b@example.org", "c@testing.example"):
                await asyncio.to_thread(send, config, rcpt)
            await wait_until(lambda: len(good.messages) == 2 and len(bad.messages) == 1)
            day, sent = await send_todays_reports(relay, config)
            assert sorted(s.status for s in sent) == ["delivered", "delivered"]
            await wait_until(lambda: len(rua_mx.messages) == 2)
            await wait_until(lambda: not relay.spool.list())
            relay.sink.flush()
            counted = relay.report_store.domains(day)

    # https: both reports arrived gzipped and parsedmarc's counts equal the sessions made.
    by_domain = {}
    for request in collector.received:
        assert request.headers["content-type"] == "application/tlsrpt+gzip"
        check_report(json.loads(gzip.decompress(request.body)))  # our strict schema too
        parsed = parse_smtp_tls_report_json(gzip.decompress(request.body).decode())
        by_domain[parsed["policies"][0]["policy_domain"]] = parsed["policies"][0]
    assert by_domain["example.org"]["successful_session_count"] == 2
    assert by_domain["example.org"]["failed_session_count"] == 0
    assert by_domain["testing.example"]["successful_session_count"] == 0
    assert by_domain["testing.example"]["failed_session_count"] == 1
    detail = by_domain["testing.example"]["failure_details"][0]
    assert detail["result_type"] == "certificate-expired"

    # mailto: DKIM-valid report mail with the report as attachment, delivered over TLS.
    for received in rua_mx.messages:
        assert received.tls is True
        assert dkim.verify(received.data, dnsfunc=lab_dnsfunc(world.dns), tlsrpt="strict")
        msg = email.message_from_bytes(received.data, policy=email.policy.default)
        assert msg["TLS-Report-Domain"] in ("example.org", "testing.example")
        assert msg.get_content_type() == "multipart/report"
        (attachment,) = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
        report = json.loads(gzip.decompress(attachment.get_payload(decode=True)))
        assert report["policies"][0]["policy"]["policy-domain"] == msg["TLS-Report-Domain"]

    # RPT-10: the two report mails to rua.example were not counted as sessions.
    assert "rua.example" not in counted
