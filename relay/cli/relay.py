"""`stsguard relay --config FILE`: run the smarthost until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from relay.app import serve
from relay.config import Config
from relay.log import configure_logging


def run(args: argparse.Namespace, config: Config) -> int:
    """`stsguard relay --config FILE`."""
    configure_logging(config.relay.log_format, config.relay.log_level)
    asyncio.run(serve(config, Path(args.config) if args.config else None))
    return 0
