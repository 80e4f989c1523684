"""The DNS resolver every part uses, built from `[dns]`: the system one only when unset."""

from __future__ import annotations

import dns.asyncresolver
import dns.nameserver
import dns.resolver

from relay.config import DnsConfig


def make_resolver(config: DnsConfig) -> dns.asyncresolver.Resolver:
    """An async resolver for `[dns].nameservers` (host:port each), else the system one."""
    if not config.nameservers:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(host, port) for host, port in config.nameserver_addresses
        ]
    # Answers are cached for their TTL: MX, A and the `_mta-sts` TXT record are asked for on every
    # delivery, and a burst of mail to one domain should cost one query, not one per message.
    resolver.cache = dns.resolver.LRUCache()
    resolver.lifetime = float(config.timeout)
    resolver.timeout = min(float(config.timeout), 3.0)
    return resolver
