"""`stsguard config [--non-default | --defaults]`: the effective config as TOML, like Postfix's
`postconf` (every key), `postconf -n` (only the keys that differ from the defaults) and
`postconf -d` (the defaults).

Durations are shown in their largest whole unit ("5d"); the password of a `[state].url` is not
shown. The output is a config file the relay accepts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from relay.config import Config, config_keys
from relay.config_checks import duration_keys
from relay.state_url import parse_state_url

_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60))


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--non-default",
        "-n",
        action="store_true",
        help="only the keys whose value differs from the default (like postconf -n)",
    )
    which.add_argument(
        "--defaults",
        "-d",
        action="store_true",
        help="the built-in default of every key, whatever the file says (like postconf -d)",
    )


def duration_text(seconds: int) -> str:
    """``"5d"``, ``"90m"``, ``"45s"``: the largest unit that divides the value."""
    for unit, size in _UNITS:
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def toml_value(value: Any) -> str:
    """One TOML value: strings as basic strings (JSON's escapes are TOML's), lists inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value) if isinstance(value, Path) else value, ensure_ascii=False)


def _shown(section: str, key: str, value: Any, durations: frozenset[tuple[str, str]]) -> Any:
    if (section, key) in durations:
        return duration_text(value)
    if (section, key) == ("state", "url") and value:
        return parse_state_url(value, Path("state.sqlite3")).redacted()  # no password
    return value


def config_lines(config: Config, *, non_default: bool) -> list[str]:
    """The TOML text, section by section; with `non_default`, empty sections are left out."""
    defaults = Config()
    durations = duration_keys()
    lines: list[str] = []
    for section, keys in config_keys().items():
        ours, theirs = getattr(config, section), getattr(defaults, section)
        body = [
            f"{key} = {toml_value(_shown(section, key, getattr(ours, key), durations))}"
            for key in keys
            if not (non_default and getattr(ours, key) == getattr(theirs, key))
        ]
        if body:
            lines += [f"[{section}]", *body, ""]
    for domain, override in sorted(config.domains.items()):
        lines += [f"[domains.{json.dumps(domain)}]", f"tls = {toml_value(override.tls)}", ""]
    return lines


def run(args: argparse.Namespace, config: Config) -> int:
    source = args.config_path or "built-in defaults"
    which = "keys that differ from the defaults" if args.non_default else "every key"
    if args.defaults:
        config, source, which = Config(), "built-in defaults", "every key"
    print(f"# stsguard config: {source}, {which}")
    print("\n".join(config_lines(config, non_default=args.non_default)).rstrip("\n"))
    return 0
