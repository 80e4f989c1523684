"""`stsguard tlsrpt show|send [--date YYYY-MM-DD] [--domain D] [--force]`: one UTC day's reports;
`stsguard tlsrpt summary [--date D | --days N] [--json] [--html FILE] [--input FILE... |
--received]`: the readable view of our counts (or of reports received from others: files, or
those `[tlsrpt_inbound]` kept).

`show` prints the JSON that would be sent (pretty); `send` sends a day that has ended: https
destinations directly (`sent`), mailto destinations by queueing the DKIM-signed report mail for the
relay to deliver (`queued`). Report ids come from day, domain and submitter, and an id used in an
earlier attempt is kept, so `show` prints the id that `send` sends.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from relay.cli.tlsrpt_received import kept_reports, prevalence_appendix
from relay.config import Config
from relay.errors import UsageError
from relay.log import configure_logging
from relay.queue.control import tell_queued
from relay.queue.spool import REPORT_MAIL_FLAGS, Spool
from relay.reports import report_settings
from relay.resolver import make_resolver
from relay.running import relay_running
from relay.state.database import StateError
from relay.state.stores import open_state, state_exists
from relay.tls import client_context
from tlsrpt_emit.deliver import DeliveryOutcome
from tlsrpt_emit.errors import ReportFormatError
from tlsrpt_emit.model import Report
from tlsrpt_emit.names import a_label
from tlsrpt_emit.received import read_received
from tlsrpt_emit.render import report_to_dict
from tlsrpt_emit.schedule import (
    Clients,
    ReportSettings,
    build_day_reports,
    send_day,
    send_one,
)
from tlsrpt_emit.store import MemoryReportStore, ReportStore, SentReport
from tlsrpt_emit.summary import (
    render_html,
    render_text,
    summarize_counts,
    summarize_received,
    summary_to_json,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show", "send", "summary"])
    days = p.add_mutually_exclusive_group()
    days.add_argument(
        "--date", metavar="YYYY-MM-DD", help="the UTC day (default: yesterday; summary: 7 days)"
    )
    days.add_argument(
        "--days", type=int, metavar="N", help="summary: the last N UTC days, today included"
    )
    p.add_argument("--domain", help="only the report for this policy domain")
    p.add_argument(
        "--force", action="store_true", help="send: also a day that has not ended (marks it done)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="summary: one JSON object; show: JSON even for a day without reports ([])",
    )
    p.add_argument("--html", metavar="FILE", help="summary: write a self-contained HTML page")
    p.add_argument(
        "--input",
        nargs="+",
        metavar="FILE",
        help="summary: reports received from others (JSON, .json.gz or the report mail)",
    )
    p.add_argument(
        "--received",
        action="store_true",
        help="summary: the reports others sent about our domains ([tlsrpt_inbound]), as kept",
    )


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
    if not state_exists(config.state_url):
        return MemoryReportStore()
    try:
        return open_state(config.state_url, front=False).reports
    except StateError as exc:
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
    store: ReportStore,
    day: datetime.date,
    settings: ReportSettings,
    domain: str | None,
    *,
    as_json: bool,
) -> int:
    reports = _reports(store, day, settings, domain)
    if domain:
        if not reports:
            print(f"no sessions to {domain} recorded on {day}")
            return 1
        print(json.dumps(report_to_dict(reports[0]), indent=2, ensure_ascii=False))
    elif reports or as_json:
        print(json.dumps([report_to_dict(r) for r in reports], indent=2, ensure_ascii=False))
    else:
        print(f"no reports for {day} (UTC): no sessions recorded that day (--json prints [])")
    return 0


@dataclass(slots=True)
class _Heard:
    """What each destination did with each report this run (from `send_one`'s hook)."""

    accepted: dict[str, tuple[str, ...]] = field(default_factory=dict)
    errors: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    queued: list[str] = field(default_factory=list)  # queue ids of the mailto: report mail

    def __call__(self, report: Report, outcome: DeliveryOutcome) -> None:
        self.accepted[report.policy_domain] = outcome.accepted
        self.errors[report.policy_domain] = outcome.errors


async def _send(
    config: Config,
    store: ReportStore,
    day: datetime.date,
    settings: ReportSettings,
    domain: str | None,
    heard: _Heard,
) -> list[SentReport]:
    async with httpx.AsyncClient(
        verify=client_context(config.tls.ca_file),
        trust_env=False,
        timeout=float(config.mtasts.fetch_timeout),
    ) as http:
        # mailto: reports go into the relay's queue, flagged so MTA-STS is not applied and the
        # session is not counted (RPT-10); a running relay is told of them afterwards.
        spool = Spool(config.relay.state_dir / "queue")

        async def submit_mail(mail_from: str, rcpts: list[str], data: bytes) -> None:
            queue_id = await asyncio.to_thread(
                spool.put, mail_from, rcpts, data, flags=REPORT_MAIL_FLAGS, client="tlsrpt"
            )
            heard.queued.append(queue_id)

        clients = Clients(
            resolver=make_resolver(config.dns),
            http=http,
            submit_mail=submit_mail,
            post_timeout=float(config.tlsrpt.post_timeout),
        )
        now = time.time()
        if domain:
            sent = await send_one(
                day, domain, store, settings=settings, clients=clients, now=now, on_outcome=heard
            )
            return [sent]
        return await send_day(
            day, store, settings=settings, clients=clients, now=now, on_outcome=heard
        )


def only_queued(sent: SentReport, heard: _Heard) -> bool:
    """True when this run only queued the report as mail (every destination that took it is a
    mailto:): the relay has yet to deliver it."""
    accepted = heard.accepted.get(sent.domain)
    return bool(accepted) and all(uri[:7].lower() == "mailto:" for uri in accepted or ())


def destination_lines(
    sent: SentReport, heard: _Heard, *, relay_up: bool, state_dir: str
) -> list[str]:
    """``  URI: sent | queued | failed (why)`` for each destination of one report."""
    accepted = heard.accepted.get(sent.domain)
    if accepted is None:  # nothing tried this run: finished before, not due, or no record
        lines = [f"  {uri}: done in an earlier run" for uri in sent.destinations_done]
        return lines
    lines = []
    for uri in accepted:
        if uri[:7].lower() == "mailto:":
            where = (
                "the relay delivers it"
                if relay_up
                else (f"no relay is running on {state_dir} to deliver it: start `stsguard relay`")
            )
            lines.append(f"  {uri}: queued ({where})")
        else:
            lines.append(f"  {uri}: sent")
    lines += [f"  {uri}: failed ({error})" for uri, error in heard.errors.get(sent.domain, ())]
    return lines


def report_line(sent: SentReport, *, queued: bool = False) -> str:
    """``DOMAIN: STATUS report REPORT-ID`` with what is still to come (`queued`: taken only as
    mail the relay has yet to deliver)."""
    what = {
        "delivered": "delivered",
        "pending": "not delivered, will be retried",
        "failed": "failed, given up",
        "no-record": "not sent",
    }.get(sent.status, sent.status)
    if queued and sent.status == "delivered":
        what = "queued"
    line = f"{sent.domain}: {what}"
    if sent.report_id:
        line += f", report {sent.report_id}"
    if sent.status == "no-record" and sent.last_error:
        line += f" ({sent.last_error})"
    if sent.status == "pending" and sent.next_retry is not None:
        at = datetime.datetime.fromtimestamp(sent.next_retry, datetime.UTC)
        line += f" (next try {at:%Y-%m-%d %H:%M}Z by the relay)"
    return line


def check_day_ended(day: datetime.date, now: float, *, force: bool) -> None:
    """RPT-03: a report covers a whole UTC day; refuse one that has not ended unless forced."""
    end = datetime.datetime.combine(
        day, datetime.time(0), tzinfo=datetime.UTC
    ) + datetime.timedelta(days=1)
    if now >= end.timestamp():
        return
    if not force:
        raise UsageError(
            f"tlsrpt send: {day} (UTC) has not ended; its report covers the whole day, so it is "
            f"sent after {end:%Y-%m-%d %H:%M}Z (--force sends what is counted so far)"
        )
    print(
        f"stsguard: --force: sending {day} before it has ended: the sessions counted until "
        f"{datetime.datetime.fromtimestamp(now, datetime.UTC):%H:%M:%S}Z; the day is then marked "
        "done, so sessions after now are never reported",
        file=sys.stderr,
    )


def _send_command(
    args: argparse.Namespace,
    config: Config,
    store: ReportStore,
    day: datetime.date,
    settings: ReportSettings,
    domain: str | None,
) -> int:
    check_day_ended(day, time.time(), force=args.force)
    if isinstance(store, MemoryReportStore):
        print(f"no sessions recorded on {day}")
        return 0
    configure_logging(config.relay.log_format, "warning")  # log lines go to stderr
    heard = _Heard()
    results = asyncio.run(_send(config, store, day, settings, domain, heard))
    if not results:
        print(f"no sessions recorded on {day}")
    relay_up = tell_queued(config.relay.state_dir, heard.queued) or relay_running(
        config.relay.state_dir
    )
    status = 0
    for sent in results:
        print(report_line(sent, queued=only_queued(sent, heard)))
        for line in destination_lines(
            sent, heard, relay_up=relay_up, state_dir=str(config.relay.state_dir)
        ):
            print(line)
        if sent.status in ("pending", "failed"):
            status = 1
    return status


SUMMARY_DAYS = 7
MAX_SUMMARY_DAYS = 366


def summary_days(date: str | None, count: int | None, now: float) -> list[datetime.date]:
    """`--date D` (one day) or `--days N` (the N days ending today); 7 days by default."""
    if date is not None:
        return [parse_day(date, now)]
    n = SUMMARY_DAYS if count is None else count
    if not 1 <= n <= MAX_SUMMARY_DAYS:
        raise UsageError(f"--days: expected 1 to {MAX_SUMMARY_DAYS}, got {n}")
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    return [today - datetime.timedelta(days=i) for i in range(n - 1, -1, -1)]


def _received(paths: list[str]) -> list[Report]:
    reports: list[Report] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"--input: cannot read {path}: {exc.strerror or exc}") from None
        try:
            reports += read_received(data)
        except ReportFormatError as exc:
            raise UsageError(f"--input: {path}: not a TLS-RPT report: {exc}") from None
    return reports


def _summary(args: argparse.Namespace, config: Config, domain: str | None) -> int:
    now = time.time()
    appendix = ""
    if args.input and args.received:
        raise UsageError("--input and --received: one or the other")
    if args.input:
        if args.date or args.days:
            raise UsageError("--input: the files' own days are shown; leave out --date/--days")
        summary = summarize_received(_received(args.input))
    elif args.received:
        days = summary_days(args.date, args.days, now)
        summary = summarize_received(kept_reports(config, days, domain))
    else:
        days = summary_days(args.date, args.days, now)
        store = open_store(config)
        rows = [(day, row) for day in days for row in store.counts(day, domain)]
        today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
        summary = summarize_counts(rows, days, partial_day=today if today in days else None)
        if args.html and not domain:  # our own sessions: their downgrade prevalence beside
            appendix = prevalence_appendix(config, days)
    if args.html:
        made = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        try:
            page = render_html(summary, generated=made, appendix=appendix)
            Path(args.html).write_text(page, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--html: cannot write {args.html}: {exc.strerror or exc}") from None
        print(f"wrote {args.html}: {len(summary.groups)} {summary.group_kind}(s)", file=sys.stderr)
    if args.json:
        print(json.dumps(summary_to_json(summary), indent=2, ensure_ascii=False))
    elif not args.html:
        print(render_text(summary), end="")
    return 0


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out `stsguard tlsrpt show|send|summary`; exit 0 when everything shown or sent."""
    if args.action == "summary":
        return _summary(args, config, a_label(args.domain) if args.domain else None)
    for option, given in (
        ("--days", args.days is not None),
        ("--html", args.html),
        ("--input", args.input),
        ("--received", args.received),
        ("--json", args.json and args.action == "send"),
    ):
        if given:
            raise UsageError(
                f"{option} is for summary (and --json for show); send takes --date and --domain"
            )
    if args.force and args.action != "send":
        raise UsageError("--force is for send")
    day = parse_day(args.date, time.time())
    domain = a_label(args.domain) if args.domain else None
    settings = report_settings(config)
    store = open_store(config)
    if args.action == "show":
        return _show(store, day, settings, domain, as_json=args.json)
    return _send_command(args, config, store, day, settings, domain)
