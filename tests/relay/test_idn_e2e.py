"""IDN-01 / D6 / D7 end to end: SMTPUTF8 mail to ``faß.de``, ``ς.example`` and ``bücher.example``
through the relay to lab MX hosts under each domain's own MTA-STS policy, and into the reports.

Beside each domain stands the domain IDNA 2003 would have taken it for (``fass.de``,
``xn--4xa.example``, sigma instead of final sigma) with an enforce policy that no MX of ours
matches: had the relay looked that policy up, the mail would not have been delivered.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
import smtplib
from email.message import EmailMessage
from email.policy import SMTPUTF8
from pathlib import Path

from lab.collector import ReportCollector
from lab.mx import CertKind
from lab.world import LabWorld, wait_until
from relay.app import Relay
from relay.config import Config
from tests.relay.test_tlsrpt_e2e import send_todays_reports
from tests.tlsrpt_emit.strict import check_report

# (as the user writes it, IDNA 2008 + UTS 46 A-label, what IDNA 2003 made of it)
DOMAINS = [
    ("faß.de", "xn--fa-hia.de", "fass.de"),
    ("ς.example", "xn--3xa.example", "xn--4xa.example"),
    ("bücher.example", "xn--bcher-kva.example", None),
]


def send_utf8(config: Config, rcpt: str) -> None:
    msg = EmailMessage()
    msg["From"] = "app@upstream.test"
    msg["To"] = rcpt
    msg["Subject"] = "idn"
    msg.set_content("grüße\n")
    host, port = config.relay.listen_address
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("smtputf8")
        client.sendmail(
            "app@upstream.test", [rcpt], msg.as_bytes(policy=SMTPUTF8), mail_options=["SMTPUTF8"]
        )


async def test_idn01_smtputf8_recipients_use_their_own_policy_and_a_label_reports(
    tmp_path: Path,
) -> None:
    async with LabWorld(tmp_path / "world").running() as world:
        collector = ReportCollector(world.ca.issue("127.0.0.1").server_context(), statuses=[202])
        await world.keep(collector.running())
        rua_mx = await world.add_mx("mx.rua.example", "127.0.0.40")
        world.publish_mx("rua.example", [(10, "mx.rua.example")])
        mxs = {}
        for i, (_, alabel, decoy) in enumerate(DOMAINS):
            mx_name = f"mx.{alabel}"
            mx = await world.add_mx(mx_name, f"127.0.0.{41 + i}", cert=CertKind.GOOD)
            mx.smtputf8 = True
            mxs[alabel] = mx
            world.publish_mx(alabel, [(10, mx_name)])
            world.publish_policy(alabel, "enforce", [mx_name])
            if alabel == "xn--bcher-kva.example":
                world.publish_tlsrpt(alabel, "mailto:reports@rua.example")
            else:
                world.publish_tlsrpt(alabel, collector.url("/tlsrpt"))
            if decoy is not None:
                world.publish_policy(decoy, "enforce", ["mx.nowhere.example"], policy_id="decoy")
        config = world.relay_config(tmp_path / "state", tlsrpt={"enabled": False})
        relay = Relay(config)
        async with relay.running():
            for ulabel, _, _ in DOMAINS:
                await asyncio.to_thread(send_utf8, config, f"bob@{ulabel}")
            await wait_until(lambda: all(mx.messages for mx in mxs.values()), 30)
            day, sent = await send_todays_reports(relay, config, 30)
            await wait_until(lambda: len(rua_mx.messages) == 1, 30)
            stored = relay.report_store.domains(day)

    # Each message arrived over TLS at its own domain's MX, addressed as the user wrote it.
    for ulabel, alabel, _ in DOMAINS:
        (got,) = mxs[alabel].messages
        assert got.tls is True
        assert got.rcpt_tos == (f"bob@{ulabel}",)
    # The IDNA 2003 look-alikes were never asked for a policy.
    for _, _, decoy in DOMAINS:
        if decoy is not None:
            assert world.policy_host.requests.get(decoy, 0) == 0
            assert world.dns.count(f"_mta-sts.{decoy}", "TXT") == 0
    # Counted, reported and named in A-labels (D7).
    assert sorted(stored) == sorted(a for _, a, _ in DOMAINS)
    assert sorted(s.status for s in sent) == ["delivered"] * 3
    posted = {}
    for request in collector.received:
        report = json.loads(gzip.decompress(request.body))
        check_report(report)
        posted[report["policies"][0]["policy"]["policy-domain"]] = report
    assert set(posted) == {"xn--fa-hia.de", "xn--3xa.example"}
    for domain, report in posted.items():
        (policy,) = report["policies"]
        assert policy["policy"]["policy-type"] == "sts"
        assert policy["policy"]["mx-host"] == [f"mx.{domain}"]
        assert policy["summary"] == {
            "total-successful-session-count": 1,
            "total-failure-session-count": 0,
        }
        assert domain in report["report-id"]
    (mail,) = rua_mx.messages
    msg = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert msg["TLS-Report-Domain"] == "xn--bcher-kva.example"
    (attachment,) = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert attachment.get_filename().startswith("lab.test!xn--bcher-kva.example!")
    body = json.loads(gzip.decompress(attachment.get_payload(decode=True)))
    check_report(body)
    assert body["policies"][0]["policy"]["policy-domain"] == "xn--bcher-kva.example"
