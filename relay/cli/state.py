"""`stsguard state migrate --to URL`: move this relay's SQLite state into PostgreSQL.

Stop the relay first; afterwards set ``[state].url`` to the same URL and start it (and the rest
of the fleet). The queue is not moved: it stays in ``state_dir`` (README: Running several relays).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from relay.config import Config
from relay.errors import StsguardError, UsageError
from relay.state.database import StateError
from relay.state.migrate import migrate_state
from relay.state_url import StateUrlError, parse_state_url


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["migrate"])
    p.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="where to move the state: postgresql://user@host/db (or sqlite:///path)",
    )


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        target = parse_state_url(args.to, Path())
    except StateUrlError as exc:
        raise UsageError(f"state migrate: --to: {exc}") from None
    source = config.state_url
    try:
        moved = migrate_state(source, target)
    except StateError as exc:
        raise StsguardError(f"state migrate: {exc}") from None
    print(
        f"moved {moved.policies} policies, {moved.failures} failed fetches, {moved.hosts} "
        f"remembered hosts, {moved.sessions} counted sessions ({moved.counter_rows} rows) and "
        f"{moved.sent_reports} sent reports, {moved.prevalence_rows} prevalence rows, "
        f"{moved.received_reports} received reports "
        f"from {source.redacted()} to {target.redacted()}"
    )
    print(f"now set [state].url to {target.redacted()} and start the relay")
    return 0
