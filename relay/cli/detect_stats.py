"""`stsguard detect stats [--days N] [--mx HOST | --domain D] [--json]`: downgrade prevalence.

The relay counts each session it opens to an MX host (`detect.prevalence`); this shows the last
N UTC days as shares, per MX host, per network (/24, /48) and per recipient domain, worst first,
and per day.
"""

from __future__ import annotations

import json
import time
from typing import Any

from detect.errors import PrevalenceStoreError
from detect.prevalence import PrevalenceRow, first_day, utc_day
from detect.prevalence_view import by_day, by_domain, by_host, by_network, format_table
from relay.config import Config
from relay.errors import StsguardError
from relay.state.database import StateError
from relay.state.stores import open_state, state_exists


def stats_rows(
    config: Config, days: int, mx: str, *, now: float, domain: str = ""
) -> list[PrevalenceRow]:
    """The stored counts of the last `days` UTC days (of one MX host, or one recipient domain,
    when given)."""
    if not state_exists(config.state_url):
        return []  # looking must not create the state
    try:
        state = open_state(config.state_url, front=False)
    except StateError as exc:
        raise StsguardError(str(exc)) from None
    try:
        assert state.prevalence is not None
        return state.prevalence.rows(first_day(utc_day(now), days), mx, domain)
    except PrevalenceStoreError as exc:
        raise StsguardError(str(exc)) from None
    finally:
        state.close()


def stats_json(rows: list[PrevalenceRow], days: int, *, now: float) -> dict[str, Any]:
    return {
        "days": days,
        "since": first_day(utc_day(now), days),
        "hosts": [s.as_json() for s in by_host(rows)],
        "networks": [s.as_json() for s in by_network(rows)],
        "domains": [s.as_json() for s in by_domain(rows)],
        "daily": [s.as_json() for s in by_day(rows)],
    }


def stats_text(rows: list[PrevalenceRow], days: int, *, now: float) -> str:
    since = first_day(utc_day(now), days)
    if not rows:
        return f"no sessions counted since {since}"
    tables = (
        ("mx host", by_host(rows)),
        ("network", by_network(rows)),
        ("domain", by_domain(rows)),
        ("day", by_day(rows)),
    )
    head = f"downgrade prevalence since {since} ({days} day(s)), worst first; shares of sessions"
    return "\n\n".join([head, *(format_table(t, sites) for t, sites in tables if sites)])


def run_stats(config: Config, *, days: int, mx: str, domain: str, as_json: bool) -> int:
    now = time.time()
    rows = stats_rows(config, days, mx, now=now, domain=domain)
    if as_json:
        print(json.dumps(stats_json(rows, days, now=now), indent=2))
    else:
        print(stats_text(rows, days, now=now))
    return 0
