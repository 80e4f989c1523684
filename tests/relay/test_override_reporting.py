"""Issue 20 item 9 on the wire: `tls = "none"` for a domain that publishes an enforce policy,
with a real STARTTLS garbler (`lab.attacker`) between the relay and a lab MX on loopback. The
message goes in plaintext as the override says; TLS-RPT counts the session under the published
policy with its failure (RFC 8460 4.3), not as a no-policy-found success."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import dns.asyncresolver

from detect.history import MemoryTlsHistoryStore
from lab.attacker import Attacker, AttackMode
from lab.dns import LabDns
from lab.mx import LabMx
from lab.pki import LabCA
from mtasts.model import Mode, Policy, PolicyResult, PolicySource
from relay.config import Config, DeliveryConfig, DomainConfig, DomainTls, RelayConfig
from relay.delivery.deliverer import Deliverer, DeliveryRequest
from relay.tls import client_context
from tlsrpt_emit.model import MemorySink, PolicyType

DOMAIN = "example.org"
MX = "mx1.example.org"


class EnforcePolicy:
    async def get(self, domain: str) -> PolicyResult:
        text = f"version: STSv1\nmode: enforce\nmx: {MX}\nmax_age: 86400\n"
        return PolicyResult(domain, Policy(Mode.ENFORCE, 86400, (MX,), text), PolicySource.FRESH)


async def test_override_none_through_a_garbler_is_reported_under_the_sts_policy(
    start_mx: Callable[..., Awaitable[LabMx]],
    lab_dns: LabDns,
    lab_resolver: dns.asyncresolver.Resolver,
    lab_ca: LabCA,
) -> None:
    mx = await start_mx(MX, "127.0.0.81")
    garbler = Attacker((mx.host, mx.port), AttackMode.GARBLE, host="127.0.0.82", port=mx.port)
    async with garbler.running():
        lab_dns.set(MX, "A", [garbler.host])
        lab_dns.add(DOMAIN, "MX", f"10 {MX}.")
        sink = MemorySink()
        deliverer = Deliverer(
            Config(
                relay=RelayConfig(hostname="relay.test"),
                delivery=DeliveryConfig(port=mx.port, connect_timeout=3, command_timeout=5),
                domains={DOMAIN: DomainConfig(tls=DomainTls.NONE)},
            ),
            resolver=lab_resolver,
            policy_service=EnforcePolicy(),
            history_store=MemoryTlsHistoryStore(),
            sink=sink,
            ssl_context=client_context(str(lab_ca.ca_file)),
        )
        body = b"Subject: item 9\r\n\r\nhello\r\n"
        outcome = await deliverer.deliver(
            DeliveryRequest("q1", "alice@sender.test", (f"bob@{DOMAIN}",), body)
        )
        await deliverer.close()
    [rcpt] = outcome.delivered
    assert not rcpt.tls
    [message] = mx.messages
    assert not message.tls
    [result] = sink.results
    assert result.policy_type is PolicyType.STS  # was no-policy-found, a success
    assert result.result_type == "starttls-not-supported"
    assert result.mx_host == MX
    assert "starttls-garbled" in result.additional_information
