"""Outbound delivery of one message to the recipients of one domain.

    deliverer = Deliverer(config, resolver=..., policy_service=..., history_store=...,
                          sink=..., ssl_context=client_context(config.tls.ca_file))
    outcome = await deliverer.deliver(DeliveryRequest(queue_id, mail_from, rcpts, data))

For each MX host in preference order (STS-13) the `Deliverer` takes a pooled session or sets up a
new one (`negotiate`: banner, EHLO, our own STARTTLS, handshake with SNI = the MX host, EHLO again,
with `relay.decision` asked at every step), sends the message (`transfer`: MAIL, RCPT, DATA) and
reports the attempt (`report`: TLS-RPT, remembered TLS, metrics, one log line). Sessions are kept
for `idle_timeout` seconds and reused for the next message to the same MX (`pool`).

An MX that fails before the final dot (refused, dropped, a protocol error) is a temporary failure
of that MX and the next one is tried; at most `[delivery].max_mx_addresses` addresses per attempt;
the relay's own listen address is never connected to (`loops`: 5.4.6 when nothing else is left).

Nothing escapes `deliver` but cancellation. Once an MX has answered the final dot its answer is the
outcome: what follows (remembered TLS, TLS-RPT, metrics, logs, parking the session) is best effort
(`best_effort`) and cannot change it; an error inside the relay before that is a deferral.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import dns.asyncresolver
import structlog

from detect.history import TlsHistoryStore
from mtasts.errors import PolicyError
from mtasts.fetch import lookup_sts_record
from mtasts.model import PolicyResult
from relay.config import Config
from relay.decision import Decision, RequireTlsFailure, decide_expiry
from relay.delivery.best_effort import Step, answered, final_answer_scope
from relay.delivery.loops import LOOP_REASON, SelfAddresses, discard_self
from relay.delivery.model import (
    DeliveryOutcome,
    DeliveryRequest,
    RcptOutcome,
    RcptStatus,
    every_rcpt,
)
from relay.delivery.mx import MxHost, MxResult, MxStatus, lookup_mx
from relay.delivery.negotiate import Attempt, Established, Negotiator, SessionFactory
from relay.delivery.policy import (
    STS_APPLIED,
    Destination,
    MxPlan,
    Refusal,
    destination,
    needs_sts,
    plan_host,
)
from relay.delivery.policy_lookup import lookup_host
from relay.delivery.pool import SessionPool
from relay.delivery.report import AttemptReporter, PrevalenceSink
from relay.delivery.requiretls import relaxed_bounce, requiretls_outcome
from relay.delivery.session import WIRE_ERRORS, ConnectFailed
from relay.delivery.transfer import normalize_crlf, transfer
from relay.errors import SessionError
from relay.metrics import Metrics
from tlsrpt_emit.model import ResultSink

__all__ = [
    "Deliverer",
    "DeliveryOutcome",
    "DeliveryRequest",
    "PolicyLookup",
    "RcptOutcome",
    "RcptStatus",
    "normalize_crlf",
]

log = structlog.get_logger(__name__)


class PolicyLookup(Protocol):
    """What the deliverer needs of `mtasts.service.PolicyService`."""

    async def get(self, domain: str) -> PolicyResult: ...


@dataclass(slots=True)
class _Tries:
    """The addresses one attempt may still try (`max_mx_addresses`), and whether any answered."""

    limit: int
    left: int = -1
    connected: bool = False
    _told: bool = False

    def __post_init__(self) -> None:
        self.left = self.limit

    def exhausted(self, host: str) -> bool:
        """True when no address may be tried any more (said once in the log)."""
        if self.left > 0:
            return False
        if not self._told:
            log.warning("delivery.mx_address_limit", mx_host=host, max_mx_addresses=self.limit)
            self._told = True
        return True


class Deliverer:
    """Delivers queued messages to recipient MX hosts under each domain's TLS policy."""

    def __init__(
        self,
        config: Config,
        *,
        resolver: dns.asyncresolver.Resolver,
        policy_service: PolicyLookup,
        history_store: TlsHistoryStore,
        sink: ResultSink,
        ssl_context: ssl.SSLContext,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        idle_timeout: float = 5.0,
        session_factory: SessionFactory | None = None,
        prevalence: PrevalenceSink | None = None,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.policy_service = policy_service
        self.clock = clock
        self.rng = rng or random.Random()
        self.negotiator = Negotiator(
            config,
            ssl_context=ssl_context,
            history=history_store,
            clock=clock,
            session_factory=session_factory,
        )
        self.pool = SessionPool(
            concurrency=config.delivery.concurrency_per_destination,
            idle_timeout=idle_timeout,
            clock=clock,
        )
        self.is_self = SelfAddresses(config)
        self.reporter = AttemptReporter(
            history=history_store,
            sink=sink,
            clock=clock,
            metrics=metrics,
            log_recipients_mode=config.relay.log_recipients,
            prevalence=prevalence,
        )

    @property
    def sink(self) -> ResultSink:
        """Where TLS-RPT session results go (the lab swaps in a tee)."""
        return self.reporter.sink

    @sink.setter
    def sink(self, sink: ResultSink) -> None:
        self.reporter.sink = sink

    async def deliver(self, request: DeliveryRequest) -> DeliveryOutcome:
        """Try each MX of the recipient domain until one takes the message or none is left.
        Never raises but for cancellation (see the module docstring)."""
        with (
            final_answer_scope(),
            structlog.contextvars.bound_contextvars(
                queue_id=request.queue_id,
                recipient_domain=request.domain,
                rcpts=self.reporter.recipients(request.rcpts),
            ),
        ):
            try:
                outcome = await self._deliver(request)
            except Exception as exc:
                outcome = self.reporter.best_effort.outcome_after(request, exc)
            return self.reporter.finished(request, outcome)

    async def _deliver(self, request: DeliveryRequest) -> DeliveryOutcome:
        await self.pool.prune()
        mx = await lookup_mx(request.domain, self.resolver, rng=self.rng)
        if mx.status is not MxStatus.OK:
            status = RcptStatus.BOUNCED if mx.permanent else RcptStatus.DEFERRED
            log.warning("delivery.mx_lookup", status=str(mx.status), reason=mx.reason)
            return every_rcpt(request, status, mx.reason)
        dest = await self._destination(request, mx)
        outcome = await self._try_hosts(request, mx, dest)
        if relaxed_bounce(request, outcome):
            # RFC 8689 section 5: a DSN is not discarded for want of REQUIRETLS.
            log.warning("delivery.requiretls_relaxed", reason=outcome.rcpts[0].reason)
            relaxed = replace(request.flags, requiretls=False)
            return await self._deliver(replace(request, flags=relaxed))
        return outcome

    async def expiry_decision(
        self, domain: str, *, tls_failure: bool, failed_policy_id: str | None
    ) -> Decision:
        """STS-12: before bouncing a message past queue_lifetime, look at the `_mta-sts` TXT id
        again; a new id means one more try with the new policy (`Action.DEFER`)."""
        live_id: str | None = None
        if tls_failure:
            try:
                record = await lookup_sts_record(domain, self.resolver)
            except PolicyError as exc:
                log.info("delivery.expiry_txt_lookup_failed", domain=domain, error=str(exc))
                record = None
            live_id = record.id if record is not None else None
        return decide_expiry(
            tls_failure=tls_failure, failed_policy_id=failed_policy_id, live_policy_id=live_id
        )

    async def close(self) -> None:
        """QUIT every idle session (at shutdown)."""
        await self.pool.close()

    async def _destination(self, request: DeliveryRequest, mx: MxResult) -> Destination:
        """The domain's TLS rules (`relay.delivery.policy`), with its MTA-STS policy looked up
        when one can apply; a failed look-up is reported (RFC 8460 4.3)."""
        result: PolicyResult | None = None
        domain_tls = self.config.domain_tls(request.domain)
        if needs_sts(domain_tls, literal=mx.literal, requiretls=request.flags.requiretls):
            result = await self.policy_service.get(request.domain)
        dest = destination(
            request.domain,
            self.config,
            sts=result,
            mx=mx,
            tls_required_no=request.flags.tls_required_no,
            # RPT-10: MTA-STS is not applied to report mail, like `TLS-Required: No`.
            report_mail=request.flags.no_tlsrpt,
            requiretls=request.flags.requiretls,
        )
        # Only where the policy applies: under an override it is looked up to report under.
        applied = dest.domain_tls in STS_APPLIED
        if result is not None and result.failure is not None and applied and dest.tlsrpt:
            self.reporter.policy_failure(request, result)
        return dest

    async def _try_hosts(
        self, request: DeliveryRequest, mx: MxResult, dest: Destination
    ) -> DeliveryOutcome:
        policy_id = dest.policy_id
        hosts, looped = discard_self(mx.hosts, self.is_self)
        if looped:
            log.warning("delivery.mx_loop", mx_hosts=[h.name for h in mx.hosts if h not in hosts])
            if not hosts:
                reason = LOOP_REASON.format(domain=request.domain)
                return replace(every_rcpt(request, RcptStatus.BOUNCED, reason), policy_id=policy_id)
        tries = _Tries(self.config.delivery.max_mx_addresses)
        last: RcptOutcome | None = None
        failures: list[RequireTlsFailure] = []  # per MX, for a REQUIRETLS message
        for index, host in enumerate(hosts):
            last_mx = index == len(hosts) - 1
            failures.append(RequireTlsFailure.TEMPORARY)  # until this MX says otherwise
            facts = await lookup_host(dest, host, resolver=self.resolver)
            plan = plan_host(dest, facts, last_mx=last_mx, now=self.clock())
            if plan.refusal is not None:
                last = self._refused(request, plan, plan.refusal)
                if plan.refused_by is Refusal.REQUIRETLS:
                    failures[-1] = RequireTlsFailure.NO_AUTH
                continue
            if not host.addresses:
                log.info("delivery.mx_no_address", mx_host=host.name)
                last = RcptOutcome("", RcptStatus.DEFERRED, f"{host.name} has no address")
                continue
            if tries.exhausted(host.name):
                break
            outcome = await self._try_host(request, host, plan, tries)
            if isinstance(outcome, DeliveryOutcome):
                return replace(outcome, policy_id=policy_id)
            if outcome.requiretls:
                failures[-1] = RequireTlsFailure(outcome.requiretls)
            if last is None or outcome.result_type or not last.result_type:
                last = outcome  # the TLS failure, if any, is what the sender should read
        if last is None:
            return every_rcpt(request, RcptStatus.DEFERRED, "no MX host to try")
        if request.flags.requiretls:
            # A policy that could not be fetched (and none cached) may be had next time.
            sts = dest.sts
            temporary = sts is not None and sts.failure is not None and not dest.policy.is_sts
            return requiretls_outcome(request, last, tuple(failures), temporary, policy_id)
        return DeliveryOutcome(
            request.queue_id,
            tuple(replace(last, rcpt=r, status=RcptStatus.DEFERRED) for r in request.rcpts),
            policy_id,
            unreachable=not tries.connected,
        )

    def _refused(self, request: DeliveryRequest, plan: MxPlan, refusal: Decision) -> RcptOutcome:
        """An MX host its plan refuses: logged; under DANE also reported (RFC 8460 4.3)."""
        if plan.refused_by is Refusal.DANE:
            log.warning("delivery.dane_refused", mx_host=plan.host, reason=refusal.reason)
            self.reporter.refused(request, plan)
            return RcptOutcome(
                "", RcptStatus.DEFERRED, refusal.reason, refusal.result_type, plan.host
            )
        event = "delivery.requiretls_refused" if plan.refused_by is Refusal.REQUIRETLS else ""
        log.warning(event or "delivery.mx_skipped", mx_host=plan.host, reason=refusal.reason)
        return RcptOutcome("", RcptStatus.DEFERRED, refusal.reason, None, plan.host)

    async def _try_host(
        self,
        request: DeliveryRequest,
        host: MxHost,
        plan: MxPlan,
        tries: _Tries,
    ) -> DeliveryOutcome | RcptOutcome:
        """A delivered/bounced outcome, or why this host did not take the message."""
        failure = RcptOutcome("", RcptStatus.DEFERRED, "no address answered", None, host.name)
        async with self.pool.slot(host.name):
            for ip in host.addresses:
                if tries.exhausted(host.name):
                    break
                tries.left -= 1
                with structlog.contextvars.bound_contextvars(mx_host=host.name, mx_ip=ip):
                    try:
                        attempt = await self._attempt(plan, ip)
                    except (SessionError, *WIRE_ERRORS) as exc:
                        if not isinstance(exc, ConnectFailed):
                            tries.connected = True
                        findings = exc.findings if isinstance(exc, SessionError) else ()
                        log.warning(
                            "delivery.connect_failed",
                            error=str(exc),
                            findings=[f.as_log() for f in findings],
                        )
                        failure = replace(failure, reason=str(exc))
                        continue
                    tries.connected = True
                    return await self._conclude(request, host, ip, plan, attempt)
        return failure

    async def _attempt(self, plan: MxPlan, ip: str) -> Attempt:
        """A session ready for the message (pooled or new), or the decision why there is none."""
        pooled = await self.pool.take(plan.host, ip, plan.policy)
        if pooled is not None:
            return Attempt.reusing(pooled)
        return await self.negotiator.attempt(plan, ip)

    async def _conclude(
        self,
        request: DeliveryRequest,
        host: MxHost,
        ip: str,
        plan: MxPlan,
        attempt: Attempt,
    ) -> DeliveryOutcome | RcptOutcome:
        """Send the message if the attempt allows it; report the attempt."""
        session = attempt.session
        decision = attempt.decision
        outcome: DeliveryOutcome | RcptOutcome
        if session is None:
            outcome = RcptOutcome(
                "", RcptStatus.DEFERRED, decision.reason, decision.result_type, host.name
            )
            outcome = replace(outcome, requiretls=str(decision.requiretls or ""))
        else:
            try:
                outcome = await transfer(request, session, host.name)
            except SessionError as exc:
                outcome = RcptOutcome("", RcptStatus.DEFERRED, str(exc), None, host.name)
                session.mx.close()
            else:
                if isinstance(outcome, DeliveryOutcome):
                    answered(outcome)  # from here on, best effort only
                park = self._park
                self.reporter.best_effort.run(Step.POOL, park, host.name, ip, plan, session)
        await self.reporter.attempt(request, plan, ip, attempt, outcome)
        return outcome

    def _park(self, host: str, ip: str, plan: MxPlan, session: Established) -> None:
        """Keep the session for the next message; one that cannot be kept is closed."""
        try:
            self.pool.park(host, ip, plan.policy, session)
        except Exception:
            session.mx.close()
            raise
