"""`stsguard relay --config FILE`: run the smarthost until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio

from relay.app import serve
from relay.config import Config
from relay.log import configure_logging


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options beyond --config."""


def run(args: argparse.Namespace, config: Config) -> int:
    """`stsguard relay --config FILE`."""
    configure_logging(config.relay.log_format, config.relay.log_level)
    asyncio.run(serve(config, args.config_path))
    return 0
