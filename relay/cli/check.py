"""`stsguard check [--config FILE]`: every start-up check of the relay, without starting it.

The same checks the relay runs (`relay.preflight`), plus binding the listening addresses and
comparing the DKIM key with DNS when DNS answers. While the relay of this state directory runs
(it holds ``state_dir/relay.lock``), its addresses are in use by it: the file alone is checked,
so `stsguard check && systemctl reload stsguard` works. Exit 0: the relay would start (warnings
are printed); 1: errors found (it would refuse to start); 2: the config cannot be loaded at all.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from relay.config import Config
from relay.preflight import config_problems, dkim_problems, listen_problems
from relay.resolver import make_resolver
from relay.running import relay_running
from relay.state.check import state_check


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options beyond --config."""


def dns_line(config: Config) -> str:
    """Which resolver the relay asks and whether DANE can apply (it needs believed DNSSEC)."""
    dns = config.dns
    servers = ", ".join(dns.nameservers) or "the system resolver (/etc/resolv.conf)"
    if dns.dnssec_mode == "ad":
        return f"dns: {servers}; DNSSEC answers believed, DANE on"
    why = (
        '[dns].dnssec = "off"'
        if dns.dnssec == "off"
        else "no validating resolver on loopback named"
    )
    return f"dns: {servers}; DANE off ({why})"


def run(args: argparse.Namespace, config: Config) -> int:
    problems = config_problems(config)
    if relay_running(config.relay.state_dir):
        print(
            f"relay: running on {config.relay.state_dir} (listening addresses not tested: "
            "the running relay holds them)"
        )
    else:
        problems += listen_problems(config)
    problems += asyncio.run(dkim_problems(config, make_resolver(config.dns)))
    state_problems, state_line = state_check(config.state_url)
    problems += state_problems
    print(state_line)
    print(dns_line(config))
    source = args.config_path or "built-in defaults"
    for problem in problems:
        print(f"{problem.level}: {problem.message}", file=sys.stderr)
    errors = sum(p.level == "error" for p in problems)
    warnings = len(problems) - errors
    print(f"{source}: {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0
