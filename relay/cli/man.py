"""`stsguard man [COMMAND] [--write DIR]`: manual pages made from the argument parser, so they
cannot drift from `--help`. The package installs them (``share/man/man1``, from ``man/`` in
the source tree, which `stsguard man --write man` regenerates); ``stsguard man queue | man -l -``
reads one without them installed.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from relay.config import Config
from relay.errors import UsageError
from relay.version import stsguard_version


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("page", nargs="?", metavar="COMMAND", help="the page of this command")
    p.add_argument("--write", metavar="DIR", help="write every page into DIR (stsguard*.1)")


def _roff(text: str) -> str:
    """Text safe in a roff line: backslashes and hyphens escaped, no leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def _header(name: str, summary: str) -> list[str]:
    version = stsguard_version()
    return [
        f'.TH {name.upper()} 1 "" "stsguard {version}" "stsguard manual"',
        ".nh",  # no hyphenation: names and keys are searched for as written
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(summary)}",
    ]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for action in parser._actions:  # argparse keeps no public list of them
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            takes = action.nargs != 0
            meta = f" \\fI{_roff(str(action.metavar or action.dest.upper()))}\\fR" if takes else ""
            flags = ", ".join(f"\\fB{_roff(f)}\\fR" for f in action.option_strings)
            lines += [".TP", flags + meta]
        else:
            shown = "|".join(action.choices) if action.choices else str(action.metavar)
            lines += [".TP", f"\\fI{_roff(shown)}\\fR"]
        lines.append(_roff(action.help or "what to do"))
    return lines


def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return {name: (p, helps[name]) for name, p in sub.choices.items()}


def _usage(parser: argparse.ArgumentParser) -> list[str]:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    return [".SH SYNOPSIS", ".nf", _roff(usage), ".fi"]


def _description(name: str, summary: str) -> list[str]:
    """The summary, then the command module's docstring after its first paragraph."""
    from relay.cli import COMMANDS

    doc = importlib.import_module(COMMANDS[name][0]).__doc__ or ""
    paragraphs = [" ".join(p.split()).replace("`", "") for p in doc.split("\n\n")[1:]]
    lines = [_roff(summary[:1].upper() + summary[1:] + ".")]
    for paragraph in filter(None, paragraphs):
        lines += [".PP", _roff(paragraph)]
    return lines


def command_page(parser: argparse.ArgumentParser, name: str) -> str:
    """The page `stsguard-NAME(1)`."""
    sub, summary = _commands(parser)[name]
    lines = [
        *_header(f"stsguard-{name}", summary),
        *_usage(sub),
        ".SH DESCRIPTION",
        *_description(name, summary),
        ".SH OPTIONS",
        *_options(sub),
        ".SH EXIT STATUS",
        "0 ok, 1 problems found, 2 usage or config error (one line on standard error); see",
        ".BR stsguard (1).",
        ".SH SEE ALSO",
        ".BR stsguard (1)",
    ]
    return "\n".join(lines) + "\n"


def main_page(parser: argparse.ArgumentParser) -> str:
    """The page `stsguard(1)`: every command, exit status, files, environment."""
    from relay.cli import CONFIG_ENV, DEFAULT_CONFIG, EPILOG  # the entry module imports us lazily

    commands = _commands(parser)
    lines = [*_header("stsguard", "outbound SMTP smarthost against STARTTLS downgrades")]
    lines += _usage(parser)
    lines += [".SH DESCRIPTION", _roff(parser.description or ""), ".SH COMMANDS"]
    for name, (_, summary) in commands.items():
        lines += [".TP", f"\\fB{_roff(name)}\\fR", _roff(summary) + f"; see stsguard\\-{name}(1)."]
    status, _, rest = EPILOG.partition("\n\n")
    lines += [".SH EXIT STATUS", _roff(" ".join(status.removeprefix("exit status: ").split()))]
    lines += [".SH ENVIRONMENT", ".TP", f"\\fB{CONFIG_ENV}\\fR", _roff(" ".join(rest.split()))]
    lines += [".SH FILES", ".TP", _roff(str(DEFAULT_CONFIG)), "the config file by default."]
    see = [f".BR stsguard\\-{name} (1)," for name in commands]
    lines += [".SH SEE ALSO", *see[:-1], see[-1].rstrip(",")]
    return "\n".join(lines) + "\n"


def pages(parser: argparse.ArgumentParser) -> dict[str, str]:
    """File name -> page, for every page."""
    found = {"stsguard.1": main_page(parser)}
    for name in _commands(parser):
        found[f"stsguard-{name}.1"] = command_page(parser, name)
    return found


def run(args: argparse.Namespace, config: Config) -> int:
    from relay.cli import build_parser

    parser = build_parser()
    if args.write:
        if args.page:
            raise UsageError("man: --write writes every page; give no COMMAND")
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in pages(parser).items():
            (out / name).write_text(text, encoding="utf-8")
        return 0
    if args.page is None:
        print(main_page(parser), end="")
    elif args.page in _commands(parser):
        print(command_page(parser, args.page), end="")
    else:
        raise UsageError(f"man: no command {args.page!r}")
    return 0
