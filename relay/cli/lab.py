"""`stsguard lab [--json] [--scenario NAME]`: the downgrade-attack lab (`lab.runner`)."""

from __future__ import annotations

import argparse

from relay.config import Config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "run the downgrade-attack lab on loopback; exit 0 only if all came out right"
    p.add_argument("--json", action="store_true", help="one JSON object per scenario")
    p.add_argument("--scenario", metavar="NAME", help="run only this scenario")


def run(args: argparse.Namespace, config: Config) -> int:
    from lab.runner import run as run_lab  # the lab is big; import it only to run it

    status: int = run_lab(args, config)
    return status
