"""Expiry, DSNs and delay warnings (Postfix's qmgr_bounce and qmgr_defer).

Past `[delivery].queue_lifetime` a deferred recipient fails (STS-12 may grant one more try);
failed recipients get one DSN per message (`Spool.queue_dsn`); a message waiting longer than
`[delivery].delay_warning` gets one "delayed" DSN. A message whose DSN cannot be built is held
(`Spool.hold`).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Collection
from typing import Protocol

import structlog

from relay.config import Config
from relay.decision import Action, Decision, decide_expiry
from relay.delivery.report import log_recipients
from relay.errors import SpoolError
from relay.metrics import Metrics
from relay.queue.bounce import build_dsn, should_bounce
from relay.queue.passes import Pass, split_by_domain
from relay.queue.retry import expired
from relay.queue.spool import QueuedMessage, Spool

log = structlog.get_logger(__name__)


class DecidesExpiry(Protocol):
    """What expiry needs of `relay.delivery.deliverer.Deliverer` (the STS-12 check)."""

    async def expiry_decision(
        self, domain: str, *, tls_failure: bool, failed_policy_id: str | None
    ) -> Decision: ...


class Bouncer:
    """Fails what expired, queues DSNs and delay warnings; `wake` is told of each one queued."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        deliverer: DecidesExpiry,
        *,
        metrics: Metrics | None,
        clock: Callable[[], float],
        wake: Callable[[str], None],
    ) -> None:
        self.config = config
        self.spool = spool
        self.deliverer = deliverer
        self.metrics = metrics
        self.clock = clock
        self.wake = wake

    def deadline(self, message: QueuedMessage) -> float:
        """When a message parked on a dead destination must be looked at again: its expiry,
        or its delay warning when one is due first."""
        release = message.received_at + self.config.delivery.queue_lifetime
        warning = self.config.delivery.delay_warning
        if warning and not message.warned and should_bounce(message.mail_from, message.flags):
            release = min(release, message.received_at + warning)
        return release

    async def expire(self, p: Pass, now: float) -> None:
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
                    p.expired.add(rcpt)
            else:
                log.info("queue.expiry_retry", queue_id=p.message.id, reason=verdict.reason)

    async def bounce(
        self, message: QueuedMessage, data: bytes | None, expired: Collection[str] = ()
    ) -> QueuedMessage | None:
        """One DSN for every FAILED recipient of `message` (`expired`: those that outlived
        queue_lifetime); None when the message is done."""
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
                return await self._hold(message, exc, now)
        dsn_id = message.dsn_id
        updated = await asyncio.to_thread(self.spool.queue_dsn, message.id, dsn, now=now)
        if self.metrics is not None:
            self.metrics.bounced.inc(len(failed))
        self._log_failed(message, failed, expired, dsn_id if dsn is not None else "")
        if dsn is not None:
            self.wake(dsn_id)
        return updated if updated.pending else None

    def _log_failed(
        self,
        message: QueuedMessage,
        failed: list[tuple[str, str]],
        expired: Collection[str],
        dsn_id: str,
    ) -> None:
        """One `warning` line per reason, Postfix's way: ``status=bounced`` or ``status=expired``
        (outlived queue_lifetime), the recipients (as `[relay].log_recipients` says), and where
        the DSN went (``dsn_id``; none for a null sender or our own report mail)."""
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for rcpt, reason in failed:
            groups["expired" if rcpt in expired else "bounced", reason].append(rcpt)
        for (status, reason), rcpts in groups.items():
            log.warning(
                "queue.bounced",
                queue_id=message.id,
                status=status,
                sender=message.mail_from,
                rcpts=log_recipients(tuple(rcpts), self.config.relay.log_recipients),
                reason=reason,
                dsn_id=dsn_id or "none",
            )

    async def _hold(self, message: QueuedMessage, exc: Exception, now: float) -> QueuedMessage:
        """Hold a message whose DSN cannot be built (an administrator looks at it)."""
        reason = f"its DSN cannot be built: {type(exc).__name__}: {exc}"[:300]
        if self.metrics is not None:
            self.metrics.delivery_errors.labels(kind="dsn").inc()
        held = await asyncio.to_thread(self.spool.hold, message.id, reason, now=now)
        log.error("queue.held", queue_id=message.id, reason=reason)
        return held

    async def warn(self, message: QueuedMessage, data: bytes | None, now: float) -> QueuedMessage:
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
