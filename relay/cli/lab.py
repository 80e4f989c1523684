"""`stsguard lab [--json] [--scenario NAME]`: the downgrade-attack lab (`lab.runner`)."""

from __future__ import annotations

import argparse
import logging

from relay.config import Config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "run the downgrade-attack lab on loopback; exit 0 only if all came out right"
    p.add_argument("--json", action="store_true", help="one JSON object per scenario")
    p.add_argument("--scenario", metavar="NAME", help="run only this scenario")


def run(args: argparse.Namespace, config: Config) -> int:
    from lab.runner import run as run_lab  # the lab is big; import it only to run it

    # The lab's report is its output; a library's warning (asyncio's "returning true from
    # eof_received() has no effect when using ssl" when an attacked TLS peer half-closes) is not,
    # and never reaches stderr as raw text. A library's error still shows, as one line of ours.
    # (structlog is the lab runner's own: it captures each scenario's events.)
    logging.basicConfig(level=logging.ERROR, format="stsguard lab: %(name)s: %(message)s")
    status: int = run_lab(args, config)
    return status
