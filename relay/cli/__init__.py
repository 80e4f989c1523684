"""The `stsguard` command line: one module per command, each with `add_arguments(parser)` and
`run(args, config) -> int`. Only the module of the command being run is imported."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from relay.cli.permission import permission_line
from relay.config import Config, load_config
from relay.errors import StsguardError, UsageError
from relay.log import capture_warnings
from relay.version import stsguard_version

DEFAULT_CONFIG = Path("/etc/stsguard/stsguard.toml")
CONFIG_ENV = "STSGUARD_CONFIG"

# command -> (module with `add_arguments` and `run`, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "relay": ("relay.cli.relay", "run the smarthost: SMTP in, queue, delivery, daily TLS-RPT"),
    "check": ("relay.cli.check", "run every start-up check of the relay without starting it"),
    "policy": (
        "relay.cli.policy",
        "show a domain's MTA-STS and TLS-RPT set-up and what is wrong with it",
    ),
    "probe": (
        "relay.cli.probe",
        "connect to a domain's MX hosts: EHLO, STARTTLS, TLS, remembered TLS, the decision",
    ),
    "tlsrpt": ("relay.cli.tlsrpt", "show or send the TLS-RPT reports of one UTC day"),
    "queue": ("relay.cli.queue", "see and steer the queue"),
    "detect": ("relay.cli.detect", "list remembered TLS per MX host, or forget one host"),
    "config": (
        "relay.cli.config",
        "print the effective config as TOML (-n: only what differs, like postconf -n; "
        "-d: the defaults)",
    ),
    "state": ("relay.cli.state", "move the SQLite state into PostgreSQL (migrate --to URL)"),
    "socketmap": (
        "relay.cli.socketmap",
        "answer Postfix's smtp_tls_policy_maps (socketmap) from this engine and policy cache",
    ),
    "lab": ("relay.cli.lab", "run the downgrade-attack lab on loopback"),
    "man": ("relay.cli.man", "print a manual page made from these options (--write DIR: all)"),
    "example-config": ("relay.cli.example", "print the example config (every key, its default)"),
    "example-unit": ("relay.cli.example", "print the systemd unit"),
}

EPILOG = """\
exit status: 0 ok, 1 problems found (a broken policy, a probe with findings or failed look-ups,
a check with errors, reports not sent, an id or host that names nothing), 2 usage or config
error (one line on stderr).

Without --config, commands read $STSGUARD_CONFIG, else /etc/stsguard/stsguard.toml when it
exists, else the built-in defaults. `stsguard COMMAND --help` shows a command's options."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("stsguard").strip()
        raise StsguardError(f"{command}: {message}" if command else message)


def _command_parser(
    sub: argparse._SubParsersAction[_Parser], name: str, help_text: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG} when it exists)",
    )
    return p


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, just that command's options are loaded (faster)."""
    parser = _Parser(
        prog="stsguard",
        description="stsguard: an outbound SMTP smarthost that enforces MTA-STS, detects "
        "STARTTLS downgrades and sends TLS-RPT reports.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stsguard {stsguard_version()}")
    sub = parser.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for name, (module_name, help_text) in COMMANDS.items():
        p = _command_parser(sub, name, help_text)
        if only is None or only == name:
            importlib.import_module(module_name).add_arguments(p)
    return parser


def _named_command(argv: Sequence[str]) -> str | None:
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def config_path(given: str | None) -> Path | None:
    """`--config`, else $STSGUARD_CONFIG, else /etc/stsguard/stsguard.toml when it exists."""
    if given:
        return Path(given)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


# Commands that print what the package ships: no config is read (it may not be readable).
_NO_CONFIG = ("man", "example-config", "example-unit")

# Commands that read the relay's state directory rather than the network.
_STATE_COMMANDS = ("queue", "detect", "tlsrpt")


def unused_state_warning(config: Config, path: Path | None) -> str | None:
    """A command on a state directory no relay has used is probably reading the wrong one.

    A relative `state_dir` no relay used from here is an error (UsageError): it names another
    directory in every working directory (the unit runs the relay in /var/lib/stsguard), so the
    answer would be about a queue that is not the relay's. An absolute one is only a warning.
    """
    state_dir = config.relay.state_dir
    if (state_dir / "queue").is_dir() or config.state_url.shared or config.state_db.exists():
        return None
    where = f"config {path}" if path else "built-in defaults (no --config, no $STSGUARD_CONFIG)"
    if not state_dir.is_absolute():
        raise UsageError(
            f"[relay].state_dir {str(state_dir)!r} ({where}) is relative and no relay has used "
            f"it from {Path.cwd()}; give the relay's config with --config or $STSGUARD_CONFIG, "
            'or set an absolute state_dir (state_dir = "/var/lib/stsguard")'
        )
    return (
        f"no relay has used the state directory {state_dir} ({where}); "
        "give the relay's config with --config or $STSGUARD_CONFIG"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stsguard` console script."""
    capture_warnings()  # before any command imports a library that warns at import
    words = list(sys.argv[1:] if argv is None else argv)
    if not words:  # a bare `stsguard`: what it can do, as `--help` shows it, and status 2
        build_parser("").print_help(sys.stderr)
        return 2
    try:
        args = build_parser(_named_command(words)).parse_args(words)
        path = config_path(args.config)
        if args.command in _NO_CONFIG:
            config = Config()
        elif path is not None and path.exists() and not os.access(path, os.R_OK):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        else:
            config = load_config(path)
        args.config_path = path
        # Checked before the command runs (it may create the directory), said after its output.
        reads_state = args.command in _STATE_COMMANDS and not getattr(args, "input", None)
        warning = unused_state_warning(config, path) if reads_state else None
        module = importlib.import_module(COMMANDS[args.command][0])
        status: int = module.run(args, config)
        if warning:
            print(f"stsguard: warning: {warning}", file=sys.stderr)
        return status
    except StsguardError as exc:
        print(f"stsguard: error: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        command = " ".join(words)
        print(f"stsguard: error: {permission_line(exc, command)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`stsguard queue list | head`): stop quietly, as Unix tools do,
        # and keep Python from complaining again when it flushes stdout on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
