"""`stsguard socketmap`: answer Postfix's smtp_tls_policy_maps (socketmap) from the relay's
engine and policy cache, without the smarthost."""

from __future__ import annotations

import argparse

import uvloop

from relay.config import Config
from relay.errors import UsageError
from relay.log import configure_logging
from relay.socketmap.run import serve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        metavar="ADDRESS",
        help="host:port or an absolute Unix socket path (default: [socketmap].listen)",
    )


def run(args: argparse.Namespace, config: Config) -> int:
    listen = args.listen or config.socketmap.listen
    if not listen:
        raise UsageError(
            'socketmap: no address: set [socketmap].listen (e.g. "127.0.0.1:8461") or --listen'
        )
    configure_logging(config.relay.log_format, config.relay.log_level)
    # uvloop: a third less CPU per query than asyncio's own loop (bench/README.md).
    uvloop.run(serve(config, listen, args.config_path))
    return 0
