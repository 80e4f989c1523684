"""`stsguard probe DOMAIN [--json]`: what each MX host's EHLO, STARTTLS and TLS look like from here.

The MTA-STS policy is looked up live; no message is sent (EHLO, STARTTLS, EHLO, QUIT). Exit 0
whenever the probe ran, whatever it found; an MX that cannot be reached is reported, not raised.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from mtasts.parse import policy_domain
from relay.config import Config
from relay.delivery.probe import probe_domain
from relay.errors import UsageError
from relay.log import configure_logging
from relay.resolver import make_resolver
from relay.tls import client_context


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
    return 0
