"""`stsguard relay --config FILE`: run the smarthost until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio

import uvloop

from relay.app import serve
from relay.config import Config
from relay.errors import StsguardError
from relay.log import configure_logging
from relay.startup import intake_processes


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options beyond --config."""


def run(args: argparse.Namespace, config: Config) -> int:
    """`stsguard relay --config FILE`."""
    configure_logging(config.relay.log_format, config.relay.log_level)
    main = serve(config, args.config_path)
    if _delivers_only(config, args):
        # uvloop when this process only delivers: its TLS and transports in C cost about 5%
        # less CPU per message (bench/README.md). The SMTP intake (aiosmtpd, which builds
        # asyncio's own TLS protocol for STARTTLS) stays on asyncio's loop: its idle and
        # per-address limits did not hold under uvloop in the tests.
        uvloop.run(main)
    else:
        asyncio.run(main)
    return 0


def _delivers_only(config: Config, args: argparse.Namespace) -> bool:
    """True when the intake runs in child processes (`[relay].intake_processes`)."""
    try:
        return intake_processes(config, args.config_path) > 0
    except StsguardError:
        return False  # `serve` reports it
