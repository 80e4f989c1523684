"""Fixtures for MTA-STS tests: a running lab policy host and a resolver on the lab DNS server."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import dns.asyncresolver
import dns.nameserver
import pytest

from lab.dns import LabDns
from lab.pki import LabCA
from lab.policy_host import PolicyHost

POLICY = "version: STSv1\nmode: enforce\nmx: mx.{domain}\nmx: *.backup.{domain}\nmax_age: 86400\n"


def lab_resolver(lab_dns: LabDns) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(lab_dns.host, lab_dns.port)]
    resolver.lifetime = 2.0
    resolver.timeout = 1.0
    return resolver


@dataclass
class Lab:
    """The lab DNS, the policy host and a client context trusting the lab CA."""

    dns: LabDns
    host: PolicyHost
    resolver: dns.asyncresolver.Resolver
    ssl_context: ssl.SSLContext

    def publish(
        self, domain: str, record_id: str = "1", text: str | None = None, *, a: str = "127.0.0.1"
    ) -> str:
        """TXT record, policy host address and policy for `domain`; returns the policy text."""
        text = POLICY.format(domain=domain) if text is None else text
        self.dns.set(f"_mta-sts.{domain}", "TXT", [f"v=STSv1; id={record_id}"])
        self.dns.set(f"mta-sts.{domain}", "A", [a])
        self.host.set_policy(domain, text)
        return text


@pytest.fixture
async def lab(lab_dns: LabDns, lab_ca: LabCA) -> AsyncIterator[Lab]:
    host = PolicyHost(lab_ca)
    async with host.running():
        yield Lab(lab_dns, host, lab_resolver(lab_dns), lab_ca.client_context())
