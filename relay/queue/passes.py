"""One message's pass (Postfix's qmgr_message): its jobs' outcomes gathered, then written once.

A *pass* delivers a message to all its pending domains at once (a `Job` per domain). Each job's
outcome is added here (`Pass.add`, `Pass.suspend`); when the last job ends, `write_pass` makes
one durable write of every outcome (`Spool.record`).
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from relay.delivery.deliverer import DeliveryOutcome
from relay.queue.retry import next_retry
from relay.queue.scheduler import Job
from relay.queue.spool import HistoryEntry, QueuedMessage, Spool

_RECEIVED = re.compile(rb"(?:^|\r\n)received:", re.IGNORECASE)


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

    @property
    def outcome(self) -> str:
        """One word for the history: delivered, deferred or failed."""
        if not (self.deferred or self.failed):
            return "delivered"
        return "deferred" if self.deferred else "failed"


@dataclass(slots=True)
class Pass:
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
    expired: set[str] = field(default_factory=set)  # recipients failed by queue_lifetime
    history: list[HistoryEntry] = field(default_factory=list)
    write_failures: int = 0
    started: float = 0.0  # when the pass began

    def delays(self, now: float) -> tuple[float, float, float]:
        """Postfix's ``delays=a/b/c`` for a message leaving the queue now: before its first
        delivery attempt, waiting in the queue between attempts, and this last pass."""
        first = self.message.first_attempt_at or self.started
        received = self.message.received_at
        return (max(0.0, first - received), max(0.0, self.started - first), now - self.started)

    def suspend(self, job: Job, why: str) -> None:
        """A job for a dead destination ended without a connection."""
        reason = f"delivery to {job.domain} temporarily suspended: {why}"
        for rcpt in job.rcpts:
            self.deferred[rcpt] = reason
        self.suspended.add(job.domain)
        self.expiry.setdefault(job.domain, (False, None))

    def add(self, job: Job, result: JobResult, now: float) -> None:
        """What a job that ran found."""
        self.attempted = True
        self.delivered += result.delivered
        self.deferred.update(result.deferred)
        self.failed.update(result.failed)
        self.expiry[job.domain] = (result.tls_failure, result.policy_id)
        reason = result.reason or next(iter(result.failed.values()), "")
        self.history.append(HistoryEntry(now, job.domain, result.outcome, reason))

    def job_ended(self) -> bool:
        """Count one job off; True when it was the last."""
        self.jobs_left -= 1
        return self.jobs_left == 0


async def write_pass(
    spool: Spool,
    finish: Callable[[str], Awaitable[None]],
    p: Pass,
    now: float,
    *,
    retry_initial: int,
    retry_max: int,
) -> QueuedMessage | None:
    """The pass's outcomes on disk; None when the message left the queue."""
    message = p.message
    pending = {r.address for r in message.pending}
    delivered = [r for r in p.delivered if r not in p.recorded]
    if not (p.attempted or p.failed):
        return message  # every job was suspended: nothing new to write
    if set(p.delivered) == pending and not p.deferred and not p.failed:
        await finish(message.id)
        return None
    attempts = max((r.attempts for r in message.pending), default=0) + 1
    delay = next_retry(attempts, initial=retry_initial, maximum=retry_max)
    updated = await asyncio.to_thread(
        spool.record,
        message.id,
        delivered=delivered,
        deferred=p.deferred,
        failed=p.failed,
        next_attempt_at=now + delay,
        history=p.history,
        started=p.started,
    )
    p.history = []
    return updated
