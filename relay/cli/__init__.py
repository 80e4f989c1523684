"""The `stsguard` command line. Each subcommand lives in its own module with `run(args, config)`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from relay.config import load_config
from relay.errors import StsguardError

# subcommand -> module whose `run(args, config) -> int` carries it out
_COMMANDS = {
    "relay": "relay.cli.relay",
    "policy": "relay.cli.policy",
    "probe": "relay.cli.probe",
    "tlsrpt": "relay.cli.tlsrpt",
    "queue": "relay.cli.queue",
    "detect": "relay.cli.detect",
    "lab": "lab.runner",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise StsguardError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stsguard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config", metavar="FILE", help="TOML config file (default: built-in defaults)"
        )
        return p

    command("relay", "run the smarthost: SMTP in, queue, delivery, daily TLS-RPT")

    p = command("policy", "show a domain's MTA-STS and TLS-RPT set-up and what is wrong with it")
    p.add_argument("domain")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("probe", "connect to a domain's MX hosts and report their EHLO, STARTTLS and TLS")
    p.add_argument("domain")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("tlsrpt", "show or send the TLS-RPT reports of one UTC day")
    p.add_argument("action", choices=["show", "send"])
    p.add_argument("--date", metavar="YYYY-MM-DD", help="the UTC day (default: yesterday)")
    p.add_argument("--domain", help="only the report for this policy domain")

    p = command("queue", "list the queue, flush it (retry now), or delete a message")
    p.add_argument("action", choices=["list", "flush", "delete"])
    p.add_argument("id", nargs="?", help="queue id (for delete)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("detect", "list remembered TLS per MX host, or forget one host")
    p.add_argument("action", choices=["list", "forget"])
    p.add_argument("host", nargs="?", help="MX host name (for forget)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command(
        "lab", "run the downgrade-attack lab on loopback; exit 0 only if all came out right"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per scenario")
    p.add_argument("--scenario", metavar="NAME", help="run only this scenario")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stsguard` console script."""
    try:
        args = build_parser().parse_args(argv)
        config = load_config(args.config)
        module = importlib.import_module(_COMMANDS[args.command])
        status: int = module.run(args, config)
        return status
    except StsguardError as exc:
        print(f"stsguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`stsguard queue list | head`): stop quietly, as Unix tools do,
        # and keep Python from complaining again when it flushes stdout on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
