"""`stsguard tlsrpt show|send [--date YYYY-MM-DD] [--domain D]`: one UTC day's TLS-RPT reports.

`show` prints the JSON that would be sent (pretty); `send` sends now: https destinations directly,
mailto destinations by queueing the DKIM-signed report mail for the relay to deliver.
Report ids already used in an earlier attempt are kept, so a retried report is the same report.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import time

import httpx

from relay.config import Config
from relay.errors import UsageError
from relay.queue.spool import REPORT_MAIL_FLAGS, Spool
from relay.reports import report_settings
from relay.resolver import make_resolver
from relay.tls import client_context
from tlsrpt_emit.errors import TlsRptError
from tlsrpt_emit.model import Report
from tlsrpt_emit.render import report_to_dict
from tlsrpt_emit.schedule import (
    Clients,
    ReportSettings,
    build_day_reports,
    send_day,
    send_one,
)
from tlsrpt_emit.store import MemoryReportStore, ReportStore, SentReport, SqliteReportStore


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show", "send"])
    p.add_argument("--date", metavar="YYYY-MM-DD", help="the UTC day (default: yesterday)")
    p.add_argument("--domain", help="only the report for this policy domain")


def parse_day(text: str | None, now: float) -> datetime.date:
    """`--date`, or yesterday (UTC) when not given."""
    if text is None:
        return datetime.datetime.fromtimestamp(now, datetime.UTC).date() - datetime.timedelta(
            days=1
        )
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--date: expected YYYY-MM-DD, got {text!r}") from None


def open_store(config: Config) -> ReportStore:
    """The shared state file's report store; an empty one if the relay never ran here."""
    if not config.state_db.exists():
        return MemoryReportStore()
    try:
        return SqliteReportStore(config.state_db)
    except TlsRptError as exc:
        raise UsageError(str(exc)) from None


def _reports(
    store: ReportStore, day: datetime.date, settings: ReportSettings, domain: str | None
) -> list[Report]:
    ids: dict[str, str] = {}
    for name in [domain] if domain else store.domains(day):
        sent = store.get_sent(day, name)
        if sent is not None and sent.report_id:
            ids[name] = sent.report_id
    return build_day_reports(store, day, settings, domain=domain, report_ids=ids)


def _show(
    store: ReportStore, day: datetime.date, settings: ReportSettings, domain: str | None
) -> int:
    reports = _reports(store, day, settings, domain)
    if domain:
        if not reports:
            print(f"no sessions to {domain} recorded on {day}")
            return 1
        print(json.dumps(report_to_dict(reports[0]), indent=2, ensure_ascii=False))
    else:
        print(json.dumps([report_to_dict(r) for r in reports], indent=2, ensure_ascii=False))
    return 0


async def _send(
    config: Config,
    store: ReportStore,
    day: datetime.date,
    settings: ReportSettings,
    domain: str | None,
) -> list[SentReport]:
    async with httpx.AsyncClient(
        verify=client_context(config.tls.ca_file),
        trust_env=False,
        timeout=float(config.mtasts.fetch_timeout),
    ) as http:
        # mailto: reports go into the relay's queue, flagged so MTA-STS is not applied and the
        # session is not counted (RPT-10); the running relay picks them up within a second.
        spool = Spool(config.relay.state_dir / "queue")

        async def submit_mail(mail_from: str, rcpts: list[str], data: bytes) -> None:
            await asyncio.to_thread(
                spool.put, mail_from, rcpts, data, flags=REPORT_MAIL_FLAGS, client="tlsrpt"
            )

        clients = Clients(
            resolver=make_resolver(config.dns),
            http=http,
            submit_mail=submit_mail,
            post_timeout=float(config.tlsrpt.post_timeout),
        )
        now = time.time()
        if domain:
            return [await send_one(day, domain, store, settings=settings, clients=clients, now=now)]
        return await send_day(day, store, settings=settings, clients=clients, now=now)


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out `stsguard tlsrpt show|send`; exit 0 when everything shown or sent."""
    day = parse_day(args.date, time.time())
    domain = args.domain.lower().rstrip(".") if args.domain else None
    settings = report_settings(config)
    store = open_store(config)
    if args.action == "show":
        return _show(store, day, settings, domain)
    if isinstance(store, MemoryReportStore):
        print(f"no sessions recorded on {day}")
        return 0
    results = asyncio.run(_send(config, store, day, settings, domain))
    status = 0
    for sent in results:
        line = f"{sent.domain}: {sent.status}"
        if sent.destinations_done:
            line += f" to {', '.join(sent.destinations_done)}"
        if sent.last_error:
            line += f" ({sent.last_error})"
        print(line)
        if sent.status in ("pending", "failed"):
            status = 1
    return status
