"""The queue runner: hands due messages to the deliverer and writes each outcome back to the spool.

One delivery per (message, recipient domain) at a time, at most `delivery.workers` at once. Mail
accepted by this process is handed over with its bytes (`submit`) and delivered without reading
the spool again; the spool is also read every second, which finds retries that came due and mail
queued by other processes (a `stsguard queue flush`). Spool calls do file I/O with fsync, so they
run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from relay.config import Config
from relay.decision import Action, Decision
from relay.delivery.deliverer import DeliveryOutcome, DeliveryRequest
from relay.errors import UnknownMessage
from relay.intake.group_commit import ThreadBatch
from relay.metrics import Metrics, queue_states
from relay.queue.retry import expired, next_retry
from relay.queue.spool import QueuedMessage, Spool

log = structlog.get_logger(__name__)

POLL_SECONDS = 1.0
# Message bytes kept in memory between intake and delivery, at most; past it a submitted message
# is read back from the spool when its turn comes, so a backlog does not grow the process.
HELD_BYTES_MAX = 64 * 1024 * 1024


class Delivers(Protocol):
    """What the runner needs of `relay.delivery.deliverer.Deliverer`."""

    async def deliver(self, request: DeliveryRequest) -> DeliveryOutcome: ...

    async def expiry_decision(
        self, domain: str, *, tls_failure: bool, failed_policy_id: str | None
    ) -> Decision: ...


# (message, failed recipients with their reasons) -> None; puts a DSN into the queue.
Bouncer = Callable[[QueuedMessage, bytes, list[tuple[str, str]]], Awaitable[None]]


def split_by_domain(rcpts: list[str]) -> dict[str, list[str]]:
    """Recipients grouped by their domain (lower-cased), in order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for rcpt in rcpts:
        groups[rcpt.rpartition("@")[2].lower().rstrip(".")].append(rcpt)
    return dict(groups)


class QueueRunner:
    """Drives the spool: due messages in, delivery outcomes out."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        deliverer: Delivers,
        *,
        bounce: Bouncer | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.spool = spool
        self.deliverer = deliverer
        self.bounce = bounce
        self.metrics = metrics
        self.clock = clock
        self._wake = asyncio.Event()
        self._new: set[str] = set()
        self._submitted: list[tuple[QueuedMessage, bytes | None]] = []
        self._held_bytes = 0
        self._holders: dict[str, int] = {}  # submitted message -> delivery tasks holding its bytes
        self._finish = ThreadBatch(spool.finish)  # removals of delivered mail share thread hops
        self._scan_now = False
        self._busy: set[tuple[str, str]] = set()
        self._slots = asyncio.Semaphore(config.delivery.workers)

    def wake(self, queue_id: str | None = None) -> None:
        """Look at the queue now: at message `queue_id` (just queued by another process, such as
        an intake process), or at all of it."""
        if queue_id is None:
            self._scan_now = True
        else:
            self._new.add(queue_id)
        self._wake.set()

    def submit(self, message: QueuedMessage, data: bytes) -> None:
        """A message this process just queued: deliver it now, from memory when it fits."""
        self._submitted.append((message, self._hold(data)))
        self._wake.set()

    def _hold(self, data: bytes) -> bytes | None:
        """`data` when it fits the memory budget (and counts against it), else None."""
        if self._held_bytes + len(data) > HELD_BYTES_MAX:
            return None
        self._held_bytes += len(data)
        return data

    async def run(self) -> None:
        """Run until cancelled; deliveries in flight are cancelled too (the spool keeps them).

        The whole spool is read once a second (and on `wake()` without an id), which also finds
        retries that came due and mail queued by other processes (`stsguard tlsrpt send`, a
        `queue flush`); a message just queued here is read alone, so intake never pays for a
        full scan per message.
        """
        last_scan = -POLL_SECONDS
        async with asyncio.TaskGroup() as tasks:
            while True:
                self._wake.clear()
                if self._scan_now or time.monotonic() - last_scan >= POLL_SECONDS:
                    self._scan_now, self._new = False, set()
                    last_scan = time.monotonic()
                    queued = await asyncio.to_thread(self.spool.list)
                    if self.metrics is not None:
                        self.metrics.set_queue(*queue_states(queued), clock=self.clock)
                else:
                    # Queued by an intake process: envelope and bytes in one read.
                    fresh, self._new = self._new, set()
                    queued = []
                    if fresh:
                        for message, data in await asyncio.to_thread(self._read, fresh):
                            self._submitted.append((message, self._hold(data)))
                submitted, self._submitted = self._submitted, []
                for message, held in submitted:
                    self._dispatch(message, tasks, held)
                now = self.clock()
                for message in queued:
                    if message.is_due(now):
                        self._dispatch(message, tasks)
                if not self._new and not self._scan_now and not self._submitted:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    def _read(self, ids: set[str]) -> list[tuple[QueuedMessage, bytes]]:
        """The named messages still in the queue, with their bytes."""
        found = []
        for queue_id in sorted(ids):
            with contextlib.suppress(UnknownMessage):
                found.append(self.spool.read_message(queue_id))
        return found

    async def run_once(self) -> None:
        """Deliver everything due now and wait for it (tests and `stsguard queue flush --now`)."""
        async with asyncio.TaskGroup() as tasks:
            for message in await asyncio.to_thread(self.spool.due, self.clock()):
                self._dispatch(message, tasks)

    def _dispatch(
        self, message: QueuedMessage, tasks: asyncio.TaskGroup, data: bytes | None = None
    ) -> None:
        now = self.clock()
        due = [r.address for r in message.pending if r.next_attempt_at <= now]
        holders = 0
        for domain, rcpts in split_by_domain(due).items():
            key = (message.id, domain)
            if key in self._busy:
                continue
            self._busy.add(key)
            holders += 1
            tasks.create_task(self._deliver(message, domain, rcpts, data))
        if data is not None:
            if holders:
                self._holders[message.id] = holders
            else:
                self._held_bytes -= len(data)

    async def _deliver(
        self, message: QueuedMessage, domain: str, rcpts: list[str], data: bytes | None = None
    ) -> None:
        key = (message.id, domain)
        try:
            async with self._slots:
                if data is None:
                    # A snapshot from a scan may be stale: a delivery that just finished may
                    # have removed or updated the message. Work from its current state.
                    message = await asyncio.to_thread(self.spool.get, message.id)
                    now = self.clock()
                    still_due = {r.address for r in message.pending if r.next_attempt_at <= now}
                    rcpts = [r for r in rcpts if r in still_due]
                if rcpts:
                    await self._deliver_now(message, domain, rcpts, data)
        except UnknownMessage:
            pass  # delivered, bounced or deleted meanwhile
        except Exception as exc:
            # Never let one message take the runner down; it stays queued and is retried.
            log.exception("queue.delivery_crashed", queue_id=message.id, domain=domain)
            reason = f"internal error: {type(exc).__name__}: {exc}"[:300]
            try:
                await self._defer(message, rcpts, reason, attempts=1)
            except Exception:
                log.exception("queue.defer_failed", queue_id=message.id)
        finally:
            self._busy.discard(key)
            if data is not None:
                self._release(message.id, len(data))

    def _release(self, queue_id: str, size: int) -> None:
        """The last delivery task holding a submitted message's bytes is done with them."""
        self._holders[queue_id] -= 1
        if not self._holders[queue_id]:
            del self._holders[queue_id]
            self._held_bytes -= size

    async def _deliver_now(
        self, message: QueuedMessage, domain: str, rcpts: list[str], data: bytes | None = None
    ) -> None:
        if data is None:
            data = await asyncio.to_thread(self.spool.read_data, message.id)
        request = DeliveryRequest(
            queue_id=message.id,
            mail_from=message.mail_from,
            rcpts=tuple(rcpts),
            data=data,
            tls_required_no=message.flags.tls_required_no,
            no_tlsrpt=message.flags.no_tlsrpt,
            smtputf8=message.flags.smtputf8,
            eight_bit=message.flags.eight_bit,
        )
        outcome = await self.deliverer.deliver(request)
        delivered = [r.rcpt for r in outcome.delivered]
        if self.metrics is not None and delivered:
            self.metrics.observe_delivered(message.received_at, self.clock(), len(delivered))
        if delivered and set(delivered) == {r.address for r in message.pending}:
            # Every recipient still pending is done: remove it without reading it back.
            await self._finish(message.id)
        elif delivered:
            await asyncio.to_thread(self.spool.mark_delivered, message.id, delivered)
        bounced = [(r.rcpt, r.reason) for r in outcome.bounced]
        deferred = list(outcome.deferred)
        if deferred:
            attempts = max(r.attempts for r in message.recipients if r.address in rcpts) + 1
            lifetime = self.config.delivery.queue_lifetime
            if expired(message.received_at, self.clock(), lifetime=lifetime):
                verdict = await self.deliverer.expiry_decision(
                    domain, tls_failure=outcome.tls_failure, failed_policy_id=outcome.policy_id
                )
                if verdict.action is Action.BOUNCE:
                    bounced += [(r.rcpt, f"{r.reason} ({verdict.reason})") for r in deferred]
                    deferred = []
                else:
                    log.info("queue.expiry_retry", queue_id=message.id, reason=verdict.reason)
            for r in deferred:
                reason = f"{r.reason} ({r.result_type})" if r.result_type else r.reason
                await self._defer(message, [r.rcpt], reason, attempts=attempts)
        if bounced:
            await self._bounce(message, data, bounced)

    async def _defer(
        self, message: QueuedMessage, rcpts: list[str], reason: str, *, attempts: int
    ) -> None:
        delay = next_retry(
            attempts,
            initial=self.config.delivery.retry_initial,
            maximum=self.config.delivery.retry_max,
        )
        await asyncio.to_thread(
            self.spool.mark_deferred,
            message.id,
            rcpts,
            error=reason,
            next_attempt_at=self.clock() + delay,
        )

    async def _bounce(
        self, message: QueuedMessage, data: bytes, failed: list[tuple[str, str]]
    ) -> None:
        if self.bounce is not None:
            await self.bounce(message, data, failed)
        reasons = "; ".join(f"{rcpt}: {reason}" for rcpt, reason in failed)
        await asyncio.to_thread(
            self.spool.mark_bounced, message.id, [rcpt for rcpt, _ in failed], reasons
        )
