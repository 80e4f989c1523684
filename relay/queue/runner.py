"""The queue manager: passes over due messages, per-destination deliveries, one outcome path.

The spool is read once at start (`Spool.scan`, in a thread, while intake already listens); from
then on the queue lives in memory (`relay.queue.scheduler`): next-attempt times in a heap,
per-destination queues, dead destinations. Nothing rescans the spool: mail queued here arrives by
`submit`, mail queued by intake processes and `stsguard queue` commands by `wake`, `flush`,
`forget` and `schedule` (see `relay.queue.control`).

A *pass* delivers a message to all its pending domains at once (a job per domain) and ends with
one durable write of every outcome (`Spool.record`), then, when recipients failed for good, one
DSN for all of them (`Spool.queue_dsn`). Whatever goes wrong in a job (an exception included)
ends as a deferral of that job with the usual back-off, expiry and DSN; what goes wrong in the
bookkeeping (a full disk) backs off; a message whose DSN cannot be built is held (`Spool.hold`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from relay.config import Config
from relay.decision import Action, Decision, decide_expiry
from relay.delivery.deliverer import DeliveryOutcome, DeliveryRequest
from relay.errors import SpoolError, UnknownMessage
from relay.intake.group_commit import ThreadBatch
from relay.metrics import Metrics
from relay.queue.bounce import build_dsn, should_bounce
from relay.queue.retry import expired, next_retry
from relay.queue.scheduler import Destinations, DueTimes, Job
from relay.queue.spool import Attempt, QueuedMessage, Spool

log = structlog.get_logger(__name__)

# Message bytes kept in memory between intake and delivery, at most; past it a message is read
# back from the spool when its turn comes, so a backlog does not grow the process.
HELD_BYTES_MAX = 64 * 1024 * 1024
# Messages in a pass at once, at most (Postfix's qmgr_message_active_limit is 20,000; a Python
# envelope is heavier, and a pass to a dead destination ends in microseconds); the rest wait in
# the heap at about 200 bytes each.
ACTIVE_MAX = 2_000
# How often parked messages (waiting for a dead destination) are looked at for expiry and delay
# warnings.
PARKED_CHECK_SECONDS = 60.0
# The queue metrics (messages by state, oldest age) are worked out at most this often.
REPORT_SECONDS = 5.0

_RECEIVED = re.compile(rb"(?:^|\r\n)received:", re.IGNORECASE)


class Delivers(Protocol):
    """What the runner needs of `relay.delivery.deliverer.Deliverer`."""

    async def deliver(self, request: DeliveryRequest) -> DeliveryOutcome: ...

    async def expiry_decision(
        self, domain: str, *, tls_failure: bool, failed_policy_id: str | None
    ) -> Decision: ...


def split_by_domain(rcpts: Iterable[str]) -> dict[str, list[str]]:
    """Recipients grouped by their domain (lower-cased), in order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for rcpt in rcpts:
        groups[domain_of(rcpt)].append(rcpt)
    return dict(groups)


def domain_of(rcpt: str) -> str:
    return rcpt.rpartition("@")[2].lower().rstrip(".")


def count_hops(data: bytes) -> int:
    """`Received:` header fields in the header section of `data`."""
    end = data.find(b"\r\n\r\n")
    return len(_RECEIVED.findall(data if end < 0 else data[: end + 2]))


def reached_a_server(outcome: DeliveryOutcome) -> bool:
    """False when no MX host of the destination could be connected to at all (the delivery
    says so: `DeliveryOutcome.unreachable`): the dead-destination signal."""
    return not outcome.unreachable


@dataclass(slots=True)
class JobResult:
    """What became of one job's recipients."""

    delivered: list[str] = field(default_factory=list)
    deferred: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    reached: bool | None = None
    tls_failure: bool = False
    policy_id: str | None = None

    @classmethod
    def of(cls, outcome: DeliveryOutcome) -> JobResult:
        deferred = {
            r.rcpt: f"{r.reason} ({r.result_type})" if r.result_type else r.reason
            for r in outcome.deferred
        }
        return cls(
            delivered=[r.rcpt for r in outcome.delivered],
            deferred=deferred,
            failed={r.rcpt: r.reason for r in outcome.bounced},
            reached=reached_a_server(outcome),
            tls_failure=outcome.tls_failure,
            policy_id=outcome.policy_id,
        )

    @property
    def reason(self) -> str:
        return next(iter(self.deferred.values()), "")


@dataclass(slots=True)
class _Pass:
    """One message on its way through one round of deliveries."""

    message: QueuedMessage
    data: bytes | None
    jobs_left: int
    attempted: bool = False  # a job really ran (not only "suspended")
    delivered: list[str] = field(default_factory=list)
    recorded: set[str] = field(default_factory=set)  # delivered and already written
    deferred: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    expiry: dict[str, tuple[bool, str | None]] = field(default_factory=dict)  # domain -> tls
    suspended: set[str] = field(default_factory=set)  # domains found dead
    history: list[Attempt] = field(default_factory=list)
    write_failures: int = 0


class QueueRunner:
    """Drives the queue: due messages in, delivery outcomes out."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        deliverer: Delivers,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.spool = spool
        self.deliverer = deliverer
        self.metrics = metrics
        self.clock = clock
        self.due = DueTimes()
        self.dests = Destinations(
            workers=config.delivery.workers,
            per_destination=config.delivery.concurrency_per_destination,
        )
        self.loaded = asyncio.Event()
        self._passes: dict[str, _Pass] = {}
        self._unwritten: dict[str, _Pass] = {}  # outcomes a failed write still owes the disk
        self._fresh: list[tuple[QueuedMessage, bytes | None]] = []
        self._opening: set[str] = set()
        self._woken: set[str] = set()  # just queued elsewhere: read with its bytes
        self._held_bytes = 0
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._busy = 0  # job and conclusion tasks alive
        self._stopping = False
        self._tasks: asyncio.TaskGroup | None = None
        self._finish = ThreadBatch(spool.finish)  # removals of delivered mail share thread hops
        self._write_failures = 0
        self._next_parked_check = 0.0
        # Every message in the queue and not held -> when it was received (for the oldest
        # message's age); held ones by id. About 100 bytes a message.
        self._received: dict[str, float] = {}
        self._held_ids: set[str] = set()
        self._report_at = 0.0
        self._changed = True  # since the last report

    # --- what others tell the runner -------------------------------------------------------

    def size(self) -> int:
        """Messages in the queue that are not held."""
        return len(self._received)

    def _known(self, queue_id: str, received_at: float) -> None:
        self._received[queue_id] = received_at
        self._changed = True

    def _gone(self, queue_id: str, *, held: bool = False) -> None:
        self._changed = True
        self._received.pop(queue_id, None)
        if held:
            self._held_ids.add(queue_id)
        else:
            self._held_ids.discard(queue_id)

    def _report(self, now: float) -> None:
        """The queue's size by state for the metrics, at most every REPORT_SECONDS."""
        if self.metrics is None or now < self._report_at or not self._changed:
            return
        self._report_at = now + REPORT_SECONDS
        self._changed = False
        active = min(len(self._passes) + len(self._opening), len(self._received))
        by_state = {
            "active": active,
            "deferred": len(self._received) - active,
            "hold": len(self._held_ids),
        }
        oldest = min(self._received.values()) if self._received else None
        self.metrics.set_queue(by_state, oldest, clock=self.clock)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: applies to passes and jobs from now on."""
        self.config = config
        self.dests.workers = config.delivery.workers
        self.dests.per_destination = config.delivery.concurrency_per_destination
        self._wake.set()

    def submit(self, message: QueuedMessage, data: bytes) -> None:
        """A message this process just queued: deliver it now, from memory when it fits."""
        self._fresh.append((message, self._hold(data)))
        self._known(message.id, message.received_at)
        self._wake.set()

    def wake(self, queue_id: str) -> None:
        """Message `queue_id` was queued or changed by another process: look at it now."""
        if queue_id not in self._passes:
            self.due.set(queue_id, 0.0)
            self._woken.add(queue_id)
        self._wake.set()

    def schedule(self, queue_id: str, when: float | None = None) -> None:
        """(Re)consider `queue_id` at `when` (default now), e.g. after `queue release`."""
        self.dests.unpark([queue_id])
        self._held_ids.discard(queue_id)
        if queue_id not in self._passes:
            self.due.set(queue_id, self.clock() if when is None else when)
        self._wake.set()

    def forget(self, queue_ids: Iterable[str], *, held: bool = False) -> None:
        """Messages deleted or (`held`) held: no further pass (one in flight ends without
        rescheduling: its write finds the message gone or held)."""
        ids = list(queue_ids)
        for queue_id in ids:
            self.due.discard(queue_id)
            self._unwritten.pop(queue_id, None)
            self._gone(queue_id, held=held)
        self.dests.unpark(ids)

    def flush(self) -> int:
        """Everything due now and every dead destination alive (`stsguard queue flush`)."""
        now = self.clock()
        for queue_id in self.dests.revive_all():
            self.due.set(queue_id, now)
        count = self.due.all_now(now)
        self._wake.set()
        return count + len(self._passes)

    def _hold(self, data: bytes) -> bytes | None:
        """`data` when it fits the memory budget (and counts against it), else None."""
        if self._held_bytes + len(data) > HELD_BYTES_MAX:
            return None
        self._held_bytes += len(data)
        return data

    def _let_go(self, p: _Pass) -> None:
        if p.data is not None:
            self._held_bytes -= len(p.data)
            p.data = None

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled (after `drain`, nothing is lost: the spool has every state)."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            tasks.create_task(self._load(), name="queue-load")
            while True:
                self._wake.clear()
                now = self.clock()
                if not self._stopping:
                    self._activate(now)
                    for job in self.dests.start():
                        self._spawn(self._run_job(job))
                self._report(now)
                timeout = self._sleep_for(now)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()

    def _sleep_for(self, now: float) -> float | None:
        times = [t for t in (self.due.next_time(), self.dests.next_wake()) if t is not None]
        if self.dests.parked_count():
            times.append(self._next_parked_check)
        if self.metrics is not None and self._changed:
            times.append(self._report_at)
        if not times:
            return None
        return max(0.0, min(times) - now) + 0.001

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        assert self._tasks is not None
        self._busy += 1
        self._quiet.clear()

        async def tracked() -> None:
            try:
                await work
            except Exception:
                log.exception("queue.internal_error")  # never takes the runner down
            finally:
                self._busy -= 1
                if not self._busy:
                    self._quiet.set()
                self._wake.set()

        self._tasks.create_task(tracked())

    def _activate(self, now: float) -> None:
        """Start passes: mail just queued here, then what came due (up to ACTIVE_MAX)."""
        fresh, self._fresh = self._fresh, []
        for message, data in fresh:
            self._begin(message, data, now)
        for queue_id in self.dests.probes_due(now):
            self.due.set(queue_id, now)
        if now >= self._next_parked_check:
            self._next_parked_check = now + PARKED_CHECK_SECONDS
            for queue_id in self.dests.parked_due(now):
                self.due.set(queue_id, now)
        room = ACTIVE_MAX - len(self._passes) - len(self._opening)
        if room <= 0:
            return
        ids = self.due.pop_due(now, room)
        retry = [q for q in ids if q in self._unwritten]
        for queue_id in retry:
            self._spawn(self._conclude(self._unwritten.pop(queue_id)))
        ids = [q for q in ids if q not in self._passes and q not in retry]
        if ids:
            self._opening.update(ids)
            self._spawn(self._open(ids))

    async def _open(self, ids: list[str]) -> None:
        # Mail an intake process just queued goes out now: its bytes come in the same read
        # (one open of its file), as when this process accepted it.
        fresh = [q for q in ids if q in self._woken]
        self._woken.difference_update(fresh)
        try:
            found = await asyncio.to_thread(self._read_envelopes, ids, set(fresh))
        finally:
            self._opening.difference_update(ids)
        now = self.clock()
        for queue_id in set(ids) - {m.id for m, _ in found}:
            self._gone(queue_id)  # finished, deleted or damaged
        for message, data in found:
            held = self._hold(data) if data is not None else None
            if not self._stopping:
                self._begin(message, held, now)
            elif held is not None:
                self._held_bytes -= len(held)

    def _read_envelopes(
        self, ids: list[str], with_data: set[str] | None = None
    ) -> list[tuple[QueuedMessage, bytes | None]]:
        found: list[tuple[QueuedMessage, bytes | None]] = []
        for queue_id in ids:
            try:
                if with_data and queue_id in with_data:
                    found.append(self.spool.read_message(queue_id))
                else:
                    found.append((self.spool.get(queue_id), None))
            except UnknownMessage:
                pass  # finished or deleted meanwhile
            except SpoolError as exc:
                log.error("queue.damaged_message", queue_id=queue_id, error=str(exc))
        return found

    async def _load(self) -> None:
        """Read the spool once: finish DSN steps a crash interrupted, then schedule the rest.

        The DSN steps come first, so a DSN written just before a crash is never delivered
        before the message it reports on is marked (else it would be queued again)."""
        started = time.monotonic()
        try:
            entries = await asyncio.to_thread(lambda: list(self.spool.scan()))
        except OSError as exc:
            log.error("queue.load_failed", error=str(exc))
            entries = []
        unfinished = [e for e in entries if e.failed and not e.held]
        for message, _ in await asyncio.to_thread(self._read_envelopes, [e.id for e in unfinished]):
            try:
                await self._bounce(message, None)
            except Exception as exc:
                log.error("queue.bounce_failed", queue_id=message.id, error=str(exc))
        for e in entries:
            if e.held:
                self._held_ids.add(e.id)
                continue
            if e.due is None or e.id in self._passes or e.id in self.due:
                continue
            self._known(e.id, e.received_at)
            self.due.set(e.id, e.due)
        log.info(
            "queue.loaded",
            messages=len(entries),
            held=sum(e.held for e in entries),
            seconds=round(time.monotonic() - started, 3),
        )
        self.loaded.set()
        self._wake.set()

    # --- a pass ----------------------------------------------------------------------------

    def _begin(self, message: QueuedMessage, data: bytes | None, now: float) -> None:
        if message.held or message.id in self._passes:
            if data is not None:
                self._held_bytes -= len(data)
            if message.held:
                self._gone(message.id, held=True)
            return
        self.due.discard(message.id)
        self._known(message.id, message.received_at)
        if not message.pending:
            if data is not None:
                self._held_bytes -= len(data)
            self._gone(message.id)
            if message.failed:
                self._spawn(self._bounce(message, None))
            return
        groups = split_by_domain(r.address for r in message.pending)
        p = _Pass(message, data, jobs_left=len(groups))
        self._passes[message.id] = p
        self._changed = True
        for domain, rcpts in groups.items():
            job = Job(message.id, domain, tuple(rcpts))
            if not self.dests.admit(job, now):
                self._suspend(job, now)

    def _suspend(self, job: Job, now: float) -> None:
        """A job for a dead destination ends without a connection."""
        p = self._passes[job.queue_id]
        dest = self.dests.get(job.domain)
        why = dest.reason if dest is not None else ""
        reason = f"delivery to {job.domain} temporarily suspended: {why}"
        for rcpt in job.rcpts:
            p.deferred[rcpt] = reason
        p.suspended.add(job.domain)
        p.expiry.setdefault(job.domain, (False, None))
        self._job_ended(p)

    def _job_ended(self, p: _Pass) -> None:
        p.jobs_left -= 1
        if p.jobs_left == 0:
            self._spawn(self._conclude(p))

    async def _run_job(self, job: Job) -> None:
        p = self._passes[job.queue_id]
        with structlog.contextvars.bound_contextvars(
            queue_id=job.queue_id, recipient_domain=job.domain
        ):
            try:
                result = await self._deliver(p, job)
            except Exception as exc:
                kind = type(exc).__name__
                if self.metrics is not None:
                    self.metrics.delivery_errors.labels(kind=kind).inc()
                log.exception("queue.delivery_error", error=f"{kind}: {exc}")
                reason = f"4.3.0 internal error: {kind}: {exc}"[:300]
                result = JobResult(deferred=dict.fromkeys(job.rcpts, reason))
        now = self.clock()
        suspended, revived = self.dests.done(
            job,
            reached=result.reached,
            reason=result.reason,
            now=now,
            retry_initial=self.config.delivery.retry_initial,
            retry_max=self.config.delivery.retry_max,
        )
        if result.reached is False and suspended:
            log.warning(
                "queue.destination_dead",
                domain=job.domain,
                reason=result.reason,
                suspended=len(suspended),
            )
        if revived is not None:
            log.info("queue.destination_alive", domain=job.domain, released=len(revived.queue_ids))
            for queue_id in revived.queue_ids:
                self.due.set(queue_id, now)
        for other in suspended:
            self._suspend(other, now)
        p.attempted = True
        p.delivered += result.delivered
        p.deferred.update(result.deferred)
        p.failed.update(result.failed)
        p.expiry[job.domain] = (result.tls_failure, result.policy_id)
        outcome = (
            "delivered"
            if not (result.deferred or result.failed)
            else ("failed" if not result.deferred else "deferred")
        )
        p.history.append(
            Attempt(
                now, job.domain, outcome, result.reason or next(iter(result.failed.values()), "")
            )
        )
        if p.jobs_left > 1 and result.delivered:
            # Other domains of this message are still under way: write these now, so a crash
            # before the pass ends does not deliver them again.
            with contextlib.suppress(SpoolError):
                await asyncio.to_thread(self.spool.mark_delivered, job.queue_id, result.delivered)
                p.recorded.update(result.delivered)
        self._job_ended(p)

    async def _deliver(self, p: _Pass, job: Job) -> JobResult:
        message = p.message
        data = p.data
        if data is None:
            data = await asyncio.to_thread(self.spool.read_data, message.id)
            if p.jobs_left > 1:
                p.data = self._hold(data)  # the message's other domains need it too
        hops = count_hops(data)
        limit = self.config.delivery.max_hops
        if hops > limit:
            reason = f"554 5.4.6 mail loop: {hops} Received: headers (more than {limit})"
            return JobResult(failed=dict.fromkeys(job.rcpts, reason))
        request = DeliveryRequest(
            queue_id=message.id,
            mail_from=message.mail_from,
            rcpts=job.rcpts,
            data=data,
            tls_required_no=message.flags.tls_required_no,
            no_tlsrpt=message.flags.no_tlsrpt,
            smtputf8=message.flags.smtputf8,
            eight_bit=message.flags.eight_bit,
        )
        outcome = await self.deliverer.deliver(request)
        if self.metrics is not None and outcome.delivered:
            self.metrics.observe_delivered(
                message.received_at, self.clock(), len(outcome.delivered)
            )
        return JobResult.of(outcome)

    async def _expire(self, p: _Pass, now: float) -> None:
        """Past queue_lifetime, deferred recipients fail (STS-12 may grant one more try)."""
        if not p.deferred or not expired(
            p.message.received_at, now, lifetime=self.config.delivery.queue_lifetime
        ):
            return
        for domain, rcpts in split_by_domain(list(p.deferred)).items():
            tls_failure, policy_id = p.expiry.get(domain, (False, None))
            if tls_failure:
                verdict = await self.deliverer.expiry_decision(
                    domain, tls_failure=True, failed_policy_id=policy_id
                )
            else:
                verdict = decide_expiry(
                    tls_failure=False, failed_policy_id=policy_id, live_policy_id=None
                )
            if verdict.action is Action.BOUNCE:
                for rcpt in rcpts:
                    p.failed[rcpt] = f"{p.deferred.pop(rcpt)} ({verdict.reason})"
            else:
                log.info("queue.expiry_retry", queue_id=p.message.id, reason=verdict.reason)

    async def _conclude(self, p: _Pass) -> None:
        """Write what the pass found, bounce what failed, and schedule the next pass."""
        message = p.message
        now = self.clock()
        try:
            await self._expire(p, now)
            updated = await self._write(p, now)
            self._write_failures = 0
            if updated is not None and updated.failed:
                updated = await self._bounce(updated, p.data)
            if updated is not None and not updated.held and updated.pending:
                updated = await self._warn(updated, p.data, now)
            self._passes.pop(message.id, None)
            self._changed = True
            self._let_go(p)
            if updated is None or not updated.pending or updated.held:
                self._gone(message.id, held=updated is not None and bool(updated.held))
            else:
                self._next(updated, p, now)
        except UnknownMessage:
            self._passes.pop(message.id, None)
            self._let_go(p)
            self._gone(message.id)
        except (SpoolError, OSError) as exc:
            # A full disk, a failed fsync: keep the outcomes and write them later, backing off.
            self._write_failures += 1
            p.write_failures += 1
            delay = next_retry(p.write_failures, initial=1, maximum=self.config.delivery.retry_max)
            if self.metrics is not None:
                self.metrics.delivery_errors.labels(kind="spool_write").inc()
            log.error(
                "queue.spool_write_failed", queue_id=message.id, error=str(exc), retry_in=delay
            )
            self._passes.pop(message.id, None)
            self._unwritten[message.id] = p
            self.due.set(message.id, now + delay)

    async def _write(self, p: _Pass, now: float) -> QueuedMessage | None:
        """The pass's outcomes on disk; None when the message left the queue."""
        message = p.message
        pending = {r.address for r in message.pending}
        delivered = [r for r in p.delivered if r not in p.recorded]
        if not (p.attempted or p.failed):
            return message  # every job was suspended: nothing new to write
        if set(p.delivered) == pending and not p.deferred and not p.failed:
            await self._finish(message.id)
            return None
        attempts = max((r.attempts for r in message.pending), default=0) + 1
        delay = next_retry(
            attempts,
            initial=self.config.delivery.retry_initial,
            maximum=self.config.delivery.retry_max,
        )
        updated = await asyncio.to_thread(
            self.spool.record,
            message.id,
            delivered=delivered,
            deferred=p.deferred,
            failed=p.failed,
            next_attempt_at=now + delay,
            history=p.history,
        )
        p.history = []
        return updated

    def _next(self, message: QueuedMessage, p: _Pass, now: float) -> None:
        """After a pass: park on a dead destination, wait in the heap, or nothing (done)."""
        if message.held or not message.pending or self._stopping:
            return
        domains = {domain_of(r.address) for r in message.pending}
        dead = [d for d in domains if (dest := self.dests.get(d)) is not None and dest.dead]
        if len(dead) == len(domains):
            release = message.received_at + self.config.delivery.queue_lifetime
            warning = self.config.delivery.delay_warning
            if warning and not message.warned and should_bounce(message.mail_from, message.flags):
                release = min(release, message.received_at + warning)
            if self.dests.park(dead[0], message.id, release):
                return
        when = min(r.next_attempt_at for r in message.pending)
        self.due.set(message.id, when if p.attempted else max(when, now))

    # --- bounces ---------------------------------------------------------------------------

    async def _bounce(self, message: QueuedMessage, data: bytes | None) -> QueuedMessage | None:
        """One DSN for every FAILED recipient of `message`; None when the message is done."""
        failed = [(r.address, r.last_error) for r in message.failed]
        now = self.clock()
        dsn: bytes | None = None
        if should_bounce(message.mail_from, message.flags):
            try:
                if data is None:
                    data = await asyncio.to_thread(self.spool.read_data, message.id)
                dsn = build_dsn(
                    message, data, failed, reporting_mta=self.config.relay.hostname, now=now
                )
            except (SpoolError, OSError):
                raise
            except Exception as exc:
                reason = f"its DSN cannot be built: {type(exc).__name__}: {exc}"[:300]
                if self.metrics is not None:
                    self.metrics.delivery_errors.labels(kind="dsn").inc()
                held = await asyncio.to_thread(self.spool.hold, message.id, reason, now=now)
                log.error("queue.held", queue_id=message.id, reason=reason)
                return held
        else:
            log.info("queue.bounce_suppressed", queue_id=message.id, sender=message.mail_from)
        dsn_id = message.dsn_id
        updated = await asyncio.to_thread(self.spool.queue_dsn, message.id, dsn, now=now)
        if self.metrics is not None:
            self.metrics.bounced.inc(len(failed))
        if dsn is not None:
            log.info("queue.bounced", queue_id=message.id, dsn_id=dsn_id, failed=len(failed))
            self.wake(dsn_id)
        return updated if updated.pending else None

    async def _warn(self, message: QueuedMessage, data: bytes | None, now: float) -> QueuedMessage:
        """A "delayed" DSN once the message waited [delivery].delay_warning (off when 0)."""
        warning = self.config.delivery.delay_warning
        if (
            not warning
            or message.warned
            or now - message.received_at < warning
            or not should_bounce(message.mail_from, message.flags)
        ):
            return message
        if data is None:
            data = await asyncio.to_thread(self.spool.read_data, message.id)
        waiting = [(r.address, r.last_error or "not yet delivered") for r in message.pending]
        try:
            dsn = build_dsn(
                message,
                data,
                waiting,
                reporting_mta=self.config.relay.hostname,
                now=now,
                delayed=True,
            )
        except Exception as exc:
            log.error("queue.delay_warning_failed", queue_id=message.id, error=str(exc))
            return message
        warning_id = await asyncio.to_thread(self.spool.queue_warning, message.id, dsn, now=now)
        if warning_id:
            log.info("queue.delay_warned", queue_id=message.id, dsn_id=warning_id)
            self.wake(warning_id)
        return message

    # --- stopping --------------------------------------------------------------------------

    async def drain(self, seconds: float) -> bool:
        """Start nothing new; let the jobs in flight finish and be written, for up to
        `seconds`. True when everything finished in time."""
        self._stopping = True
        for job in self.dests.drop_waiting():
            p = self._passes.get(job.queue_id)
            if p is not None:
                self._job_ended(p)  # its recipients stay as they are on disk
        self._wake.set()
        try:
            async with asyncio.timeout(seconds):
                await self._quiet.wait()
        except TimeoutError:
            log.warning("queue.stop_timeout", running=self.dests.running, seconds=seconds)
            return False
        return True
