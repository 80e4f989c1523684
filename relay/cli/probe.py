"""`stsguard probe DOMAIN [--json]`: what each MX host's EHLO, STARTTLS and TLS look like from here.

The MTA-STS policy is looked up live; no message is sent (EHLO, STARTTLS, EHLO, QUIT). Exit 0
when every MX was probed without findings, 1 when the MX look-up failed, an MX could not be
probed to the end or showed findings, 2 on a bad domain name.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from mtasts.parse import policy_domain
from relay.config import Config
from relay.delivery.probe import ProbeReport, probe_domain
from relay.errors import UsageError
from relay.log import configure_logging
from relay.resolver import make_resolver
from relay.tls import client_context


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def problems_found(report: ProbeReport) -> bool:
    """Anything a monitoring check should flag: no MX answer, a probe cut short, findings."""
    return bool(
        report.mx_error
        or report.policy_error
        or not report.mx
        or any(m.error or m.findings for m in report.mx)
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """Entry point of `stsguard probe`."""
    domain = policy_domain(args.domain)
    if domain is None:
        raise UsageError(f"probe: {args.domain!r} is not a domain name")
    configure_logging(config.relay.log_format, "warning")
    resolver = make_resolver(config.dns)
    ctx = client_context(config.tls.ca_file)
    report = asyncio.run(probe_domain(domain, config, resolver=resolver, ssl_context=ctx))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(report.as_text())
    return 1 if problems_found(report) else 0
