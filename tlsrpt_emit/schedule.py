"""When reports go out: the daily plan (RPT-03), retries (RPT-12), and `ReportSender` to run it.

The timing functions are pure (`now` and `rng` passed in); `send_one`, `send_day`, `retry_due` and
`ReportSender` do the I/O with the clients they are given.
"""

from __future__ import annotations

import asyncio
import datetime
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import dns.asyncresolver
import httpx
import structlog

from tlsrpt_emit.aggregate import build_reports, stable_report_ids, submitter_for
from tlsrpt_emit.deliver import POST_TIMEOUT, DeliveryOutcome, SubmitMail, deliver_report
from tlsrpt_emit.errors import ReportStoreError, TlsRptLookupError, TlsRptRecordError
from tlsrpt_emit.model import Report, utc_day
from tlsrpt_emit.record import lookup_tlsrpt_record
from tlsrpt_emit.render import DkimKey, gzip_report, render_json
from tlsrpt_emit.store import ReportStore, SentReport

log = structlog.get_logger(__name__)

DAY_SECONDS = 86400.0
RETRY_INITIAL = 300.0  # first retry after 5 minutes ...
RETRY_MAX = 4 * 3600.0  # ... doubling, at most 4 hours apart ...
RETRY_WINDOW = DAY_SECONDS  # ... for up to 24 hours after the first attempt (RPT-12)
CLAIM_LEASE = 15 * 60.0  # a relay that dies while sending holds the report this long at most

OutcomeHook = Callable[[Report, DeliveryOutcome], None]


# --- pure timing -----------------------------------------------------------------------------


def retry_delay(attempts: int, *, initial: float = RETRY_INITIAL, cap: float = RETRY_MAX) -> float:
    """Exponential back-off: the wait after the `attempts`-th failed attempt (1, 2, ...)."""
    return min(initial * 2.0 ** max(attempts - 1, 0), cap)


def next_retry_at(
    first_attempt: float, attempts: int, now: float, *, window: float = RETRY_WINDOW
) -> float | None:
    """When to try again after `attempts` failures, or None once past the 24 h window."""
    at = now + retry_delay(attempts)
    return at if at <= first_attempt + window else None


def midnight_before(now: float) -> float:
    """The UTC midnight at or before `now`."""
    return float(int(now // DAY_SECONDS) * DAY_SECONDS)


def next_run(now: float, max_delay: float, rng: random.Random) -> float:
    """The next UTC midnight after `now` plus a random delay of up to `max_delay` (RPT-03)."""
    delay = rng.uniform(0.0, min(max_delay, DAY_SECONDS - 1.0)) if max_delay > 0 else 0.0
    return midnight_before(now) + DAY_SECONDS + delay


def report_day(run_at: float) -> datetime.date:
    """The day a run at `run_at` (midnight plus less than a day) reports on: the one before."""
    return utc_day(run_at) - datetime.timedelta(days=1)


# --- sending ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """Who we are in reports (`[tlsrpt]` config) and how report mail is signed.

    `contact_info` is an e-mail address (RFC 8460 4.4); its domain is the submitter (5.3).
    """

    organization_name: str
    contact_info: str
    mail_from: str = ""
    dkim_key: DkimKey | None = None

    @property
    def submitter(self) -> str:
        return submitter_for(self.contact_info)

    @property
    def sender_address(self) -> str:
        """The From of report mail: as configured, else the contact-info address."""
        return self.mail_from or self.contact_info


@dataclass(frozen=True, slots=True)
class Clients:
    """The I/O clients sending needs, given from outside."""

    resolver: dns.asyncresolver.Resolver
    http: httpx.AsyncClient
    submit_mail: SubmitMail | None = None
    post_timeout: float = POST_TIMEOUT  # seconds for one https POST, DNS included


def build_day_reports(
    store: ReportStore,
    day: datetime.date,
    settings: ReportSettings,
    *,
    domain: str | None = None,
    report_ids: dict[str, str] | None = None,
) -> list[Report]:
    """The reports of `day` from the store (one per policy domain), ids kept from earlier tries."""
    fresh = stable_report_ids(day, settings.submitter)
    known = report_ids or {}
    return build_reports(
        store.counts(day, domain),
        day=day,
        organization_name=settings.organization_name,
        contact_info=settings.contact_info,
        report_id_factory=lambda d: known.get(d) or fresh(d),
    )


async def send_one(
    day: datetime.date,
    domain: str,
    store: ReportStore,
    *,
    settings: ReportSettings,
    clients: Clients,
    now: float,
    on_outcome: OutcomeHook | None = None,
    only_if_due: bool = False,
) -> SentReport:
    """One attempt at the report of `domain` for `day`, under a claim (`ReportStore.claim`) so
    that of the relays sharing a store exactly one sends it; read again once claimed (another
    relay may have sent it meanwhile, or, with `only_if_due`, moved its retry past `now`).

    `on_outcome` hears which destinations took the report this round and why others did not.
    """
    if not store.claim(day, domain, now=now, lease=CLAIM_LEASE):
        log.info("tlsrpt.report_claimed_elsewhere", domain=domain, day=str(day))
        return store.get_sent(day, domain) or SentReport(day=day, domain=domain, report_id="")
    try:
        sent = store.get_sent(day, domain)
        if only_if_due and sent is not None and (sent.next_retry or 0.0) > now:
            return sent
        return await _attempt(
            day,
            domain,
            store,
            sent,
            settings=settings,
            clients=clients,
            now=now,
            on_outcome=on_outcome,
        )
    finally:
        store.release(day, domain)


async def _attempt(
    day: datetime.date,
    domain: str,
    store: ReportStore,
    sent: SentReport | None,
    *,
    settings: ReportSettings,
    clients: Clients,
    now: float,
    on_outcome: OutcomeHook | None,
) -> SentReport:
    """Look up rua, send, record progress."""
    if sent is None:
        sent = SentReport(day=day, domain=domain, report_id="")
    if sent.finished:
        return sent
    first = sent.first_attempt if sent.first_attempt is not None else now
    try:
        record = await lookup_tlsrpt_record(domain, clients.resolver)
    except TlsRptLookupError as exc:
        return _failed(store, sent, first, now, f"look-up: {exc}")
    except TlsRptRecordError as exc:
        record, error = None, str(exc)
    else:
        error = "" if record else "no _smtp._tls record"
    if record is None:  # the domain does not do TLS-RPT: no report (RFC 8460 section 3)
        done = replace(sent, status="no-record", last_error=error, next_retry=None)
        store.put_sent(done)
        return done
    reports = build_day_reports(
        store, day, settings, domain=domain, report_ids={domain: sent.report_id}
    )
    if not reports:
        done = replace(sent, status="no-record", last_error="no sessions", next_retry=None)
        store.put_sent(done)
        return done
    report = reports[0]
    sent = replace(sent, report_id=report.report_id)
    gz = gzip_report(render_json(report))
    todo = [u for u in record.rua if u not in sent.destinations_done]
    outcome = await deliver_report(
        report,
        gz,
        todo,
        client=clients.http,
        resolver=clients.resolver,
        post_timeout=clients.post_timeout,
        submit_mail=clients.submit_mail,
        mail_from=settings.sender_address,
        now=now,
        dkim_key=settings.dkim_key,
    )
    if on_outcome is not None:
        on_outcome(report, outcome)
    if outcome.accepted:  # RPT-02: one destination is enough
        done = replace(
            sent,
            destinations_done=sent.destinations_done + outcome.accepted,
            attempts=sent.attempts + 1,
            first_attempt=first,
            next_retry=None,
            last_error="; ".join(e for _, e in outcome.errors),
            status="delivered",
        )
        store.put_sent(done)
        log.info("tlsrpt.report_delivered", domain=domain, day=str(day), to=outcome.accepted)
        return done
    return _failed(store, sent, first, now, "; ".join(e for _, e in outcome.errors))


def _failed(
    store: ReportStore, sent: SentReport, first: float, now: float, error: str
) -> SentReport:
    attempts = sent.attempts + 1
    retry = next_retry_at(first, attempts, now)
    updated = replace(
        sent,
        attempts=attempts,
        first_attempt=first,
        next_retry=retry,
        last_error=error,
        status="pending" if retry is not None else "failed",
    )
    store.put_sent(updated)
    log.warning(
        "tlsrpt.report_failed",
        domain=sent.domain,
        day=str(sent.day),
        attempts=attempts,
        next_retry=retry,
        error=error,
    )
    return updated


async def send_day(
    day: datetime.date,
    store: ReportStore,
    *,
    settings: ReportSettings,
    clients: Clients,
    now: float,
    on_outcome: OutcomeHook | None = None,
) -> list[SentReport]:
    """Send every report of `day` not yet finished whose retry time (if any) has come."""
    results = []
    for domain in store.domains(day):
        sent = store.get_sent(day, domain)
        if sent is not None and (
            sent.finished or (sent.next_retry is not None and sent.next_retry > now)
        ):
            results.append(sent)
            continue
        results.append(
            await send_one(
                day,
                domain,
                store,
                settings=settings,
                clients=clients,
                now=now,
                on_outcome=on_outcome,
                only_if_due=True,
            )
        )
    return results


async def retry_due(
    store: ReportStore, *, settings: ReportSettings, clients: Clients, now: float
) -> list[SentReport]:
    """Retry every pending report whose retry time has come."""
    return [
        await send_one(
            s.day, s.domain, store, settings=settings, clients=clients, now=now, only_if_due=True
        )
        for s in store.pending_sent()
        if s.next_retry is not None and s.next_retry <= now
    ]


class ReportSender:
    """Runs forever in the relay: yesterday's reports once a day after a random delay; retries."""

    def __init__(
        self,
        store: ReportStore,
        *,
        settings: ReportSettings,
        clients: Clients,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        max_delay: float = 4 * 3600.0,
        poll: float = 60.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clients = clients
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.SystemRandom()
        self.max_delay = max_delay
        self.poll = poll

    def first_run(self, now: float) -> float:
        """At start-up: this day's slot (midnight plus a random delay), even if already past."""
        return next_run(now - DAY_SECONDS, self.max_delay, self.rng)

    async def run(self) -> None:
        """Until cancelled: wait for the daily slot, send that day's reports, retry what is due."""
        run_at = self.first_run(self.clock())
        while True:
            now = self.clock()
            try:
                if now >= run_at:
                    day = report_day(run_at)
                    log.info("tlsrpt.daily_run", day=str(day))
                    await send_day(
                        day, self.store, settings=self.settings, clients=self.clients, now=now
                    )
                    run_at = next_run(now, self.max_delay, self.rng)
                await retry_due(self.store, settings=self.settings, clients=self.clients, now=now)
                retry_times = self._retry_times()
            except ReportStoreError as exc:  # the store is down: the day is tried again later
                log.warning("tlsrpt.store_unavailable", error=str(exc))
                retry_times = []
            wake = min([run_at, now + self.poll, *retry_times])
            await self.sleep(max(wake - self.clock(), 0.0))

    def _retry_times(self) -> list[float]:
        return [s.next_retry for s in self.store.pending_sent() if s.next_retry is not None]
