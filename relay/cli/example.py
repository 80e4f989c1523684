"""`stsguard example-config` / `stsguard example-unit`: print the files shipped in the package."""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files

from relay.config import Config

_FILES = {"example-config": "stsguard.example.toml", "example-unit": "stsguard.service"}


def shipped_file(name: str) -> str:
    """The text of a file in `relay/deploy/` as installed (wheel or source tree)."""
    return files("relay.deploy").joinpath(name).read_text(encoding="utf-8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options: redirect the output to a file (`stsguard example-config > stsguard.toml`)."""


def run(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(shipped_file(_FILES[args.command]))
    return 0
