"""`stsguard policy DOMAIN [--json]`: a domain's MTA-STS and TLS-RPT set-up and what is wrong.

Every look-up is live (TXT records, the policy fetch, MX hosts); nothing is read from or written
to the relay's policy cache. Exit 0 when no problem was found, 1 when any was (a look-up that
failed, a broken or missing record), 2 on a bad domain name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from mtasts.errors import (
    WEBPKI_INVALID,
    PolicyError,
    StsLookupError,
    StsRecordError,
)
from mtasts.fetch import policy_host, policy_url, record_name
from mtasts.model import Mode, Policy, PolicyFailure, PolicyResult, PolicySource, StsRecord
from mtasts.parse import policy_domain, select_sts_record
from relay.config import Config
from relay.diagnostics.dane_view import DaneView, dane_view
from relay.diagnostics.probe import fetch_live
from relay.errors import UsageError
from relay.log import configure_logging
from relay.resolver import make_resolver
from relay.socketmap.answer import answer
from relay.socketmap.lookup import live_facts
from relay.socketmap.protocol import Dialect
from relay.tls import client_context
from tlsrpt_emit.errors import TlsRptLookupError, TlsRptRecordError
from tlsrpt_emit.record import TlsRptRecord, lookup_tlsrpt_record

SHORT_MAX_AGE = 86_400


@dataclass
class PolicyReport:
    """What the look-ups found, and the problems in plain words."""

    domain: str
    record: StsRecord | None = None
    policy: Policy | None = None
    policy_error: PolicyError | None = None
    tlsrpt: TlsRptRecord | None = None
    mx_hosts: list[tuple[str, bool | None]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dane: DaneView | None = None
    socketmap: dict[str, str] = field(default_factory=dict)  # map name -> reply

    def as_json(self) -> dict[str, Any]:
        policy = self.policy
        error = self.policy_error
        return {
            "domain": self.domain,
            "sts_record": {"id": self.record.id} if self.record else None,
            "policy": (
                {
                    "mode": str(policy.mode),
                    "mx": list(policy.mx),
                    "max_age": policy.max_age,
                    "url": policy_url(self.domain),
                    "source": "live",
                }
                if policy
                else None
            ),
            "policy_error": (
                {"result_type": error.result_type, "message": error.message} if error else None
            ),
            "tlsrpt": {"rua": list(self.tlsrpt.rua)} if self.tlsrpt else None,
            "mx_hosts": [{"host": h, "matches_policy": m} for h, m in self.mx_hosts],
            "dane": self.dane.as_json() if self.dane else None,
            "socketmap": self.socketmap,
            "problems": self.problems,
        }

    def as_text(self) -> str:
        lines = [f"domain:       {self.domain}"]
        if self.record:
            lines.append(f"MTA-STS TXT:  {record_name(self.domain)} id={self.record.id}")
        else:
            lines.append(f"MTA-STS TXT:  none usable at {record_name(self.domain)}")
        if self.policy:
            p = self.policy
            lines += [
                f"policy:       {policy_url(self.domain)} (fetched live, not from the cache)",
                f"  mode:       {p.mode}",
                f"  mx:         {', '.join(p.mx) if p.mx else '(none)'}",
                f"  max_age:    {p.max_age} s ({_days(p.max_age)})",
            ]
        elif self.policy_error:
            lines.append(f"policy:       not fetched ({self.policy_error.result_type})")
        else:
            lines.append("policy:       none")
        for host, matches in self.mx_hosts:
            note = {None: "", True: " (matches policy)", False: " (NOT in policy)"}[matches]
            lines.append(f"MX host:      {host}{note}")
        if self.dane:
            lines += self.dane.as_text()
        if self.socketmap:
            lines.append(f"socketmap:    {self.socketmap['postfix']!r} (what Postfix is told)")
        if self.tlsrpt:
            lines.append(f"TLS-RPT rua:  {', '.join(self.tlsrpt.rua)}")
        else:
            lines.append("TLS-RPT rua:  none")
        if self.problems:
            lines.append("problems:")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("problems:     none found")
        return "\n".join(lines)


def _days(seconds: int) -> str:
    days = seconds / 86_400
    return f"{days:g} day" + ("" if days == 1 else "s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain")
    p.add_argument("--json", action="store_true", help="print one JSON object")


async def _sts_record(domain: str, resolver: dns.asyncresolver.Resolver, rep: PolicyReport) -> None:
    """The TXT record, with a problem for each way it can be unusable (STS-01, STS-02)."""
    name = record_name(domain)
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return
    except dns.exception.DNSException as exc:
        rep.problems.append(f"{name} TXT look-up failed: {exc}")
        rep.policy_error = StsLookupError(f"{name} TXT look-up failed: {exc}")
        return
    records = [tuple(rdata.strings) for rdata in answer]
    candidates = 0
    for one in records:
        try:
            candidates += select_sts_record([one]) is not None
        except StsRecordError:
            candidates += 1
    if candidates > 1:
        rep.problems.append(
            f"{name} has {candidates} v=STSv1 records; exactly one is allowed, so no policy"
        )
        return
    try:
        rep.record = select_sts_record(records)
    except StsRecordError as exc:
        rep.problems.append(f"{name} TXT record is invalid, so there is no policy: {exc.message}")


async def _policy(
    domain: str,
    resolver: dns.asyncresolver.Resolver,
    ctx: ssl.SSLContext,
    config: Config,
    rep: PolicyReport,
) -> None:
    try:
        rep.policy = await fetch_live(domain, config, resolver, ctx)
    except PolicyError as exc:
        if rep.record is None:
            return  # no TXT record and no policy host: the domain does not use MTA-STS
        rep.policy_error = exc
        if exc.result_type == WEBPKI_INVALID:
            rep.problems.append(
                f"policy host certificate not valid for {policy_host(domain)}: {exc.message}"
            )
        else:
            rep.problems.append(f"TXT record present but policy fetch failed: {exc.message}")
        return
    policy = rep.policy
    if rep.record is None and rep.policy_error is None:
        rep.problems.append(
            f"a policy is served at {policy_url(domain)} but there is no usable "
            f"{record_name(domain)} TXT record, so senders will not look for it"
        )
    if not policy.mx:
        rep.problems.append("mx pattern list empty")
    if policy.max_age < SHORT_MAX_AGE:
        rep.problems.append(
            f"max_age below 1 day is short ({policy.max_age} s): an attacker who blocks the "
            "policy host soon after expiry can strip TLS; weeks are usual"
        )
    if policy.mode is Mode.TESTING:
        rep.problems.append("mode is testing: failures are reported but mail is still delivered")
    elif policy.mode is Mode.NONE:
        rep.problems.append("mode is none: senders apply no policy")


async def _mx_hosts(domain: str, resolver: dns.asyncresolver.Resolver, rep: PolicyReport) -> None:
    try:
        answer = await resolver.resolve(domain + ".", "MX")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return
    except dns.exception.DNSException as exc:
        rep.problems.append(f"MX look-up failed: {exc}")
        return
    hosts = sorted(answer, key=lambda r: r.preference)
    for rdata in hosts:
        host = rdata.exchange.to_text(omit_final_dot=True).lower()
        matches = rep.policy.allows(host) if rep.policy and rep.policy.mx else None
        rep.mx_hosts.append((host, matches))
        if matches is False:
            rep.problems.append(f"MX host {host} does not match any mx pattern of the policy")


async def _tlsrpt(domain: str, resolver: dns.asyncresolver.Resolver, rep: PolicyReport) -> None:
    try:
        rep.tlsrpt = await lookup_tlsrpt_record(domain, resolver)
    except TlsRptLookupError as exc:
        rep.problems.append(f"TLS-RPT look-up failed: {exc}")
        return
    except TlsRptRecordError as exc:
        rep.problems.append(f"TLS-RPT record (_smtp._tls.{domain}) is invalid: {exc}")
        return
    if rep.tlsrpt is None:
        rep.problems.append(f"no TLS-RPT record (_smtp._tls.{domain}): failures are not reported")


async def _socketmap(
    domain: str, resolver: dns.asyncresolver.Resolver, config: Config, rep: PolicyReport
) -> dict[str, str]:
    """The `stsguard socketmap` answer for `domain` from these live look-ups, per map name."""
    error = rep.policy_error
    failure = PolicyFailure(error.result_type, error.message) if error else None
    source = PolicySource.FRESH if rep.policy else PolicySource.NONE
    sts = PolicyResult(domain, rep.policy, source, rep.record, failure)
    facts = await live_facts(domain, config, resolver, sts)
    return {str(d): answer(facts, d).reply for d in Dialect}


async def inspect(
    domain: str, resolver: dns.asyncresolver.Resolver, ctx: ssl.SSLContext, config: Config
) -> PolicyReport:
    """Run every look-up for `domain` (already a valid policy domain)."""
    rep = PolicyReport(domain)
    await _sts_record(domain, resolver, rep)
    await _policy(domain, resolver, ctx, config, rep)
    await _mx_hosts(domain, resolver, rep)
    rep.dane = await dane_view(domain, config, resolver, rep.policy)
    rep.problems += rep.dane.problems
    rep.socketmap = await _socketmap(domain, resolver, config, rep)
    await _tlsrpt(domain, resolver, rep)
    return rep


def run(args: argparse.Namespace, config: Config) -> int:
    """Entry point of `stsguard policy`."""
    domain = policy_domain(args.domain)
    if domain is None:
        raise UsageError(f"policy: {args.domain!r} is not a domain name")
    configure_logging(config.relay.log_format, "warning")
    resolver = make_resolver(config.dns)
    ctx = client_context(config.tls.ca_file)
    report = asyncio.run(inspect(domain, resolver, ctx, config))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(report.as_text())
    return 1 if report.problems else 0
