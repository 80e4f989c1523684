"""Handing one job to the deliverer (Postfix's qmgr_deliver): the message bytes, the loop check,
the request, and whatever the delivery raises turned into a deferral."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from relay.config import Config
from relay.delivery.best_effort import BestEffort, Step
from relay.delivery.deliverer import DeliveryOutcome, DeliveryRequest
from relay.metrics import Metrics
from relay.queue.bouncer import DecidesExpiry
from relay.queue.index import MemoryBudget
from relay.queue.passes import JobResult, Pass, count_hops
from relay.queue.scheduler import Job
from relay.queue.spool import Spool

log = structlog.get_logger(__name__)


class Delivers(DecidesExpiry, Protocol):
    """What the queue needs of `relay.delivery.deliverer.Deliverer`: delivery, and the STS-12
    check at expiry (`DecidesExpiry`)."""

    async def deliver(self, request: DeliveryRequest) -> DeliveryOutcome: ...


class Dispatcher:
    """Runs one job of a pass through the deliverer; never raises."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        deliverer: Delivers,
        budget: MemoryBudget,
        *,
        metrics: Metrics | None,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.spool = spool
        self.deliverer = deliverer
        self.budget = budget
        self.metrics = metrics
        self.clock = clock
        self.best_effort = BestEffort(metrics)

    async def run(self, p: Pass, job: Job) -> JobResult:
        """The job's result; an exception from the delivery is a deferral of every recipient."""
        try:
            return await self._deliver(p, job)
        except Exception as exc:
            kind = type(exc).__name__
            if self.metrics is not None:
                self.metrics.delivery_errors.labels(kind=kind).inc()
            log.exception("queue.delivery_error", error=f"{kind}: {exc}")
            reason = f"4.3.0 internal error: {kind}: {exc}"[:300]
            return JobResult(deferred=dict.fromkeys(job.rcpts, reason))

    async def _deliver(self, p: Pass, job: Job) -> JobResult:
        message = p.message
        data = p.data
        if data is None:
            data = await asyncio.to_thread(self.spool.read_data, message.id)
            if p.jobs_left > 1:
                p.data = self.budget.hold(data)  # the message's other domains need it too
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
            flags=message.flags,
        )
        outcome = await self.deliverer.deliver(request)
        if self.metrics is not None and outcome.delivered:
            # The MX has these: a failing metric must not turn them into a deferral (sent twice).
            observe = self.metrics.observe_delivered
            count = len(outcome.delivered)
            self.best_effort.run(Step.METRICS, observe, message.received_at, self.clock(), count)
        return JobResult.of(outcome)
