"""The queue manager: passes over due messages, per-destination deliveries, one outcome path.

Its parts, after Postfix's qmgr: `relay.queue.recovery` reads the spool once at start;
`relay.queue.scheduler` and `relay.queue.index` hold the queue in memory from then on (nothing
rescans the spool: mail queued here arrives by `submit`, mail queued by intake processes and
`stsguard queue` commands by `wake`, `flush`, `forget` and `schedule`, see
`relay.queue.control`); `relay.queue.dispatch` runs one job; `relay.queue.passes` gathers a
message's jobs into one durable write; `relay.queue.bouncer` expires, bounces and warns. An
exception in a job ends as a deferral with the usual back-off; a failed write (a full disk) backs
off and is tried again; a message whose DSN cannot be built is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from relay.config import Config
from relay.errors import SpoolError, UnknownMessage
from relay.metrics import Metrics
from relay.queue.bouncer import Bouncer
from relay.queue.dispatch import Delivers, Dispatcher
from relay.queue.index import HELD_BYTES_MAX, MemoryBudget
from relay.queue.memory import QueueMemory
from relay.queue.passes import (
    JobResult,
    Pass,
    domain_of,
    split_by_domain,
    write_pass,
)
from relay.queue.recovery import read_envelopes, recover
from relay.queue.retry import next_retry
from relay.queue.scheduler import Job
from relay.queue.spool import QueuedMessage, Spool, log_not_understood
from relay.thread_batch import ThreadBatch

log = structlog.get_logger(__name__)

# Messages in a pass at once, at most (Postfix's qmgr_message_active_limit is 20,000; a Python
# envelope is heavier, and a pass to a dead destination ends in microseconds); the rest wait in
# the heap at about 200 bytes each.
ACTIVE_MAX = 2_000
# How often parked messages (waiting for a dead destination) are looked at for expiry and delay
# warnings.
PARKED_CHECK_SECONDS = 60.0
# At most this many messages an intake process has just queued are read on the event loop (a
# small file in the page cache each); more, or any older one, are read in a thread.
INLINE_READS = 4


class QueueRunner(QueueMemory):
    """Drives the queue: due messages in, delivery outcomes out. What others tell it (submit,
    wake, schedule, forget, flush) is `QueueMemory`'s."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        deliverer: Delivers,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(config, clock, MemoryBudget(HELD_BYTES_MAX))
        self.spool = spool
        self.deliverer = deliverer
        self.metrics = metrics
        self.dispatcher = Dispatcher(
            config, spool, deliverer, self.budget, metrics=metrics, clock=clock
        )
        self.bouncer = Bouncer(
            config, spool, deliverer, metrics=metrics, clock=clock, wake=self.wake
        )
        self.loaded = asyncio.Event()
        self._opening: set[str] = set()
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._busy = 0  # job and conclusion tasks alive
        self._stopping = False
        self._tasks: asyncio.TaskGroup | None = None
        # Removals of delivered mail: on the loop (a few unlinks) unless the spool lock is held
        # exclusively; then in a thread, batched.
        self._finish = ThreadBatch(spool.finish, inline=spool.finish_now)
        self._write_failures = 0
        self._next_parked_check = 0.0

    # --- what others tell the runner (the rest is `QueueMemory`'s) ----------------------------

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: applies to passes and jobs from now on."""
        self.config = config
        self.bouncer.config = config
        self.dispatcher.config = config
        self.dests.workers = config.delivery.workers
        self.dests.per_destination = config.delivery.concurrency_per_destination
        self._wake.set()

    def _let_go(self, p: Pass) -> None:
        self.budget.release(p.data)
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
                self.index.report(
                    self.metrics, len(self._passes) + len(self._opening), now, self.clock
                )
                timeout = self._sleep_for(now)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()

    def _sleep_for(self, now: float) -> float | None:
        times = [t for t in (self.due.next_time(), self.dests.next_wake()) if t is not None]
        if self.dests.parked_count():
            times.append(self._next_parked_check)
        if self.metrics is not None and self.index.changed:
            times.append(self.index.report_at)
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
        fresh = {q for q in ids if q in self._woken}
        self._woken.difference_update(fresh)
        try:
            if len(fresh) == len(ids):
                # Just written and synced by the intake process, so in the page cache: read
                # here (35-39 us of CPU per message) rather than by a thread (196-206 us), a
                # few at a time so that the loop goes on between them.
                found = []
                for start in range(0, len(ids), INLINE_READS):
                    if start:
                        await asyncio.sleep(0)
                    found += read_envelopes(self.spool, ids[start : start + INLINE_READS], fresh)
            else:
                found = await asyncio.to_thread(read_envelopes, self.spool, ids, fresh)
        finally:
            self._opening.difference_update(ids)
        now = self.clock()
        for queue_id in set(ids) - {m.id for m, _ in found}:
            self.index.gone(queue_id)  # finished, deleted or damaged
        for message, data in found:
            held = self.budget.hold(data) if data is not None else None
            if not self._stopping:
                self._begin(message, held, now)
            else:
                self.budget.release(held)

    async def _load(self) -> None:
        """Read the spool once (`recover`), then schedule what it holds."""
        entries = await recover(self.spool, self.bouncer)
        for e in entries:
            if e.held:
                self.index.held.add(e.id)
                continue
            if e.due is None or e.id in self._passes or e.id in self.due:
                continue
            self.index.known(e.id, e.received_at)
            self.due.set(e.id, e.due)
        self.loaded.set()
        self._wake.set()

    # --- a pass ----------------------------------------------------------------------------

    def _begin(self, message: QueuedMessage, data: bytes | None, now: float) -> None:
        if message.not_understood and message.id not in self.index.held:
            log_not_understood(message.id, message.not_understood)
        if message.held or message.id in self._passes:
            self.budget.release(data)
            if message.held:
                self.index.gone(message.id, held=True)
            return
        self.due.discard(message.id)
        self.index.known(message.id, message.received_at)
        if not message.pending:
            self.budget.release(data)
            self.index.gone(message.id)
            if message.failed:
                self._spawn(self.bouncer.bounce(message, None))
            return
        groups = split_by_domain(r.address for r in message.pending)
        p = Pass(message, data, jobs_left=len(groups), started=now)
        self._passes[message.id] = p
        self.index.changed = True
        for domain, rcpts in groups.items():
            job = Job(message.id, domain, tuple(rcpts))
            if not self.dests.admit(job, now):
                self._suspend(job)

    def _suspend(self, job: Job) -> None:
        """A job for a dead destination ends without a connection."""
        p = self._passes[job.queue_id]
        dest = self.dests.get(job.domain)
        p.suspend(job, dest.reason if dest is not None else "")
        self._job_ended(p)

    def _job_ended(self, p: Pass) -> None:
        if p.job_ended():
            self._spawn(self._conclude(p))

    async def _run_job(self, job: Job) -> None:
        p = self._passes[job.queue_id]
        with structlog.contextvars.bound_contextvars(
            queue_id=job.queue_id, recipient_domain=job.domain
        ):
            result = await self.dispatcher.run(p, job)
        now = self.clock()
        self._destination_done(job, result, now)
        p.add(job, result, now)
        if p.jobs_left > 1 and result.delivered:
            # Other domains of this message are still under way: write these now, so a crash
            # before the pass ends does not deliver them again.
            with contextlib.suppress(SpoolError):
                await asyncio.to_thread(
                    functools.partial(self.spool.record, job.queue_id, delivered=result.delivered)
                )
                p.recorded.update(result.delivered)
        self._job_ended(p)

    def _destination_done(self, job: Job, result: JobResult, now: float) -> None:
        """Tell the destination how the job went: it may die (suspending its other jobs) or
        come back to life (releasing the messages parked on it)."""
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
            self._suspend(other)

    async def _conclude(self, p: Pass) -> None:
        """Write what the pass found, bounce what failed, and schedule the next pass."""
        message = p.message
        now = self.clock()
        try:
            await self.bouncer.expire(p, now)
            updated = await write_pass(
                self.spool,
                self._finish,
                p,
                now,
                retry_initial=self.config.delivery.retry_initial,
                retry_max=self.config.delivery.retry_max,
            )
            self._write_failures = 0
            if updated is not None and updated.failed:
                updated = await self.bouncer.bounce(updated, p.data, p.expired)
            if updated is not None and not updated.held and updated.pending:
                updated = await self.bouncer.warn(updated, p.data, now)
            self._end_pass(p)
            if updated is None or not (updated.pending or updated.failed or updated.held):
                self._removed(p, now)
            if updated is None or not updated.pending or updated.held:
                self.index.gone(message.id, held=updated is not None and bool(updated.held))
            else:
                self._next(updated, p, now)
        except UnknownMessage:
            self._end_pass(p)
            self.index.gone(message.id)
        except (SpoolError, OSError) as exc:
            self._write_failed(p, exc, now)

    def _removed(self, p: Pass, now: float) -> None:
        """Postfix's ``removed`` line: the message left the queue, with its delays."""
        before, waiting, last = p.delays(now)
        log.info(
            "queue.removed",
            queue_id=p.message.id,
            nrcpt=len(p.message.recipients),
            delay=round(now - p.message.received_at, 3),
            delays=f"{before:.2f}/{waiting:.2f}/{last:.2f}",
        )

    def _end_pass(self, p: Pass) -> None:
        self._passes.pop(p.message.id, None)
        self.index.changed = True
        self._let_go(p)

    def _write_failed(self, p: Pass, exc: Exception, now: float) -> None:
        """A full disk, a failed fsync: keep the outcomes and write them later, backing off."""
        self._write_failures += 1
        p.write_failures += 1
        delay = next_retry(p.write_failures, initial=1, maximum=self.config.delivery.retry_max)
        if self.metrics is not None:
            self.metrics.delivery_errors.labels(kind="spool_write").inc()
        log.error("queue.spool_write_failed", queue_id=p.message.id, error=str(exc), retry_in=delay)
        self._passes.pop(p.message.id, None)
        self._unwritten[p.message.id] = p
        self.due.set(p.message.id, now + delay)

    def _next(self, message: QueuedMessage, p: Pass, now: float) -> None:
        """After a pass: park on a dead destination, wait in the heap, or nothing (done)."""
        if message.held or not message.pending or self._stopping:
            return
        domains = {domain_of(r.address) for r in message.pending}
        dead = [d for d in domains if (dest := self.dests.get(d)) is not None and dest.dead]
        if len(dead) == len(domains) and self.dests.park(
            dead[0], message.id, self.bouncer.deadline(message)
        ):
            return
        when = min(r.next_attempt_at for r in message.pending)
        self.due.set(message.id, when if p.attempted else max(when, now))

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
