"""`stsguard detect list [--json] | forget HOST | stats`: the remembered TLS of MX hosts, and
downgrade prevalence (`relay.cli.detect_stats`).

The relay remembers, per MX host, when it last offered STARTTLS and last showed a valid
certificate (`detect.history`). A host that did within `[detect].history_days` and no longer does
is treated as a downgrade. `forget` clears one host, e.g. after its operator really turned TLS off;
a host with nothing remembered is a problem found (exit 1), as an unknown id is for `queue delete`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from detect.errors import HistoryStoreError
from detect.history import DAY, HostHistory, host_key
from relay.cli.detect_stats import run_stats
from relay.config import Config
from relay.errors import StsguardError, UsageError
from relay.preflight import is_domain_name
from relay.state.database import StateError
from relay.state.stores import open_state, state_exists
from tlsrpt_emit.names import a_label


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "forget", "stats"])
    p.add_argument("host", nargs="?", help="MX host name (for forget)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--days", type=int, default=7, metavar="N", help="stats: the last N UTC days (default 7)"
    )
    p.add_argument("--mx", default="", metavar="HOST", help="stats: only this MX host")
    p.add_argument(
        "--domain", default="", metavar="D", help="stats: only mail to this recipient domain"
    )


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="seconds")


def remembered_until(history: HostHistory, history_days: int) -> float | None:
    """Until when a missing STARTTLS or a failing certificate counts as a downgrade."""
    times = [t for t in (history.last_starttls_at, history.last_valid_cert_at) if t is not None]
    if not times or history_days <= 0:
        return None
    return max(times) + history_days * DAY


def host_json(history: HostHistory, history_days: int) -> dict[str, Any]:
    return {
        "host": history.host,
        "last_starttls_at": _iso(history.last_starttls_at),
        "last_valid_cert_at": _iso(history.last_valid_cert_at),
        "last_seen_at": _iso(history.last_seen_at),
        "remembered_until": _iso(remembered_until(history, history_days)),
    }


def host_text(history: HostHistory, history_days: int) -> str:
    shown = host_json(history, history_days)
    return (
        f"{history.host}  starttls={shown['last_starttls_at'] or 'never'}"
        f"  valid-cert={shown['last_valid_cert_at'] or 'never'}"
        f"  seen={shown['last_seen_at']}"
        f"  remembered-until={shown['remembered_until'] or '-'}"
    )


def _nothing_remembered(config: Config, *, as_json: bool) -> None:
    if as_json:
        print("[]")
    else:
        print(f"no remembered TLS ({config.state_db} does not exist)")


def _nothing_to_forget(host: str) -> int:
    """The name matches no host: a problem found (exit 1), as `queue delete` of an unknown id."""
    print(f"stsguard: no remembered TLS for {host_key(host)!r}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace, config: Config) -> int:
    action: str = args.action
    host: str | None = args.host
    if action == "forget" and not (host and host_key(host)):
        raise UsageError("detect forget: give the MX host name to forget")
    if action == "forget" and host and not is_domain_name(a_label(host)):
        raise UsageError(f"detect forget: {host!r} is not a host name")
    if action in ("list", "stats") and host:
        raise UsageError(f"detect {action}: takes no host name")
    if action == "stats":
        if not 1 <= args.days <= 3650:
            raise UsageError("detect stats: --days must be 1 to 3650")
        if args.mx and args.domain:
            raise UsageError("detect stats: --mx or --domain, not both")
        domain = a_label(args.domain) if args.domain else ""
        return run_stats(config, days=args.days, mx=args.mx, domain=domain, as_json=args.json)
    if not state_exists(config.state_url):
        # Looking must not create the state dir (the relay's user owns it, not whoever ran list).
        if action == "list":
            _nothing_remembered(config, as_json=args.json)
            return 0
        assert host is not None
        return _nothing_to_forget(host)
    try:
        state = open_state(config.state_url, front=False)
    except StateError as exc:
        raise StsguardError(str(exc)) from None
    store = state.history
    try:
        days = config.detect.history_days
        if action == "list":
            hosts = store.all()
            if args.json:
                print(json.dumps([host_json(h, days) for h in hosts], indent=2))
            elif not hosts:
                print("no remembered TLS")
            else:
                for history in hosts:
                    print(host_text(history, days))
                print(f"{len(hosts)} host(s); remembered for {days} day(s)")
            return 0
        assert host is not None
        if not store.forget(host):
            return _nothing_to_forget(host)
        print(f"forgot {host_key(host)}")
        return 0
    except HistoryStoreError as exc:
        raise StsguardError(str(exc)) from None
    finally:
        state.close()
