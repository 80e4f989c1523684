"""The reporting of each delivery attempt: TLS-RPT session results, remembered TLS, downgrade
prevalence, metrics, logs.

Every attempt of a message on an MX (a new or a reused session) emits exactly one `SessionResult`
(unless the message is a TLS-RPT report itself: RPT-10) and one `delivery.attempt` log line with
the TLS facts, the policy mode, the outcome and findings; each message ends with one
`delivery.outcome` line. An MX skipped before connecting (STS-11) or not reachable at all emits no
session result: no TLS session happened. `sending-mta-ip` is our end of the connection, kept for
sessions we refused ourselves too (enforce failures, remembered-TLS downgrades). Each new session
(not a pooled one reused) is counted once for downgrade prevalence (`detect.prevalence`) and in
``stsguard_mx_sessions_total``.

All of it is best effort (`relay.delivery.best_effort`): a failure of any part is counted and
logged once, and never changes the delivery's outcome nor reaches the queue.

Nothing here blocks the event loop: remembered TLS is written in a worker thread, and the sink
is an in-memory front (`tlsrpt_emit.sink.CountingSink` counts in memory and writes behind, in a
thread, every `flush_interval`).

Levels: findings, deferrals, bounces and plaintext deliveries that a finding flagged are
`warning`, a mail loop is `error`, the rest `info`. Every line names the envelope recipients as
`[relay].log_recipients` says (the addresses, none, or a short sha256 of each).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Protocol

import structlog

from detect.history import TlsHistoryStore
from detect.prevalence import SessionSeen, session_seen
from mtasts.model import PolicyResult
from relay.decision import Action, Observation
from relay.delivery.best_effort import BestEffort, Step
from relay.delivery.model import DeliveryOutcome, DeliveryRequest, RcptOutcome, RcptStatus
from relay.delivery.negotiate import Attempt
from relay.delivery.policy import MxPlan, ReportAs
from relay.metrics import Metrics
from relay.tls_rules import EffectivePolicy
from tlsrpt_emit.model import PolicyType, ResultSink, SessionResult, result_type_of
from tlsrpt_emit.names import a_label

log = structlog.get_logger(__name__)


class AttemptReporter:
    """Writes down what each attempt showed, for TLS-RPT, remembered TLS, metrics and logs."""

    def __init__(
        self,
        *,
        history: TlsHistoryStore,
        sink: ResultSink,
        clock: Callable[[], float],
        metrics: Metrics | None = None,
        log_recipients_mode: bool | str = True,
        prevalence: PrevalenceSink | None = None,
    ) -> None:
        self.log_recipients = log_recipients_mode
        self.prevalence = prevalence
        self.history = history
        self.sink = sink
        self.clock = clock
        self.metrics = metrics
        self.best_effort = BestEffort(metrics)

    async def attempt(
        self,
        request: DeliveryRequest,
        plan: MxPlan,
        ip: str,
        attempt: Attempt,
        outcome: DeliveryOutcome | RcptOutcome,
    ) -> None:
        """Everything one attempt on one MX address leaves behind (best effort, each part)."""
        run = self.best_effort.run
        if not attempt.reused:
            await self.best_effort.run_async(
                Step.HISTORY, self._record_history, plan.host, attempt.obs
            )
        if plan.report is not None:
            run(Step.TLSRPT, self._emit_session, plan.report, plan.host, ip, attempt)
        run(Step.METRICS, self._count_findings, attempt)
        if not attempt.reused and attempt.sending_ip:
            run(
                Step.PREVALENCE,
                self._count_session,
                request.domain,
                plan.host,
                ip,
                attempt,
                outcome,
            )
        run(Step.LOG, self._log_attempt, request.rcpts, plan.policy, attempt, outcome)

    def policy_failure(self, request: DeliveryRequest, result: PolicyResult) -> None:
        """The policy could not be had (fetch or validation failure): one session result."""
        failure = result.failure
        if failure is None:
            return
        policy = result.policy
        session = SessionResult(
            policy_domain=request.domain,
            policy_type=PolicyType.STS if policy is not None else PolicyType.NO_POLICY_FOUND,
            policy_strings=policy.policy_strings if policy is not None else (),
            when=self.clock(),
            result_type=result_type_of(failure.result_type),
            additional_information=failure.message,
        )
        self.best_effort.run(Step.TLSRPT, self.sink.record, session)

    def refused(self, request: DeliveryRequest, plan: MxPlan) -> None:
        """An MX not connected to because DANE forbade it (bogus TLSA: dnssec-invalid; dane-only
        without TLSA: dane-required): one session result, as RFC 8460 4.3 counts them."""
        decision, report = plan.refusal, plan.report
        if report is None or decision is None or decision.result_type is None:
            return
        session = SessionResult(
            policy_domain=report.policy_domain,
            policy_type=report.policy_type,
            policy_strings=report.policy_strings,
            when=self.clock(),
            mx_host=plan.host,
            result_type=decision.result_type,
            failure_reason_code=decision.reason_code,
            additional_information=decision.reason,
        )
        self.best_effort.run(Step.TLSRPT, self.sink.record, session)

    def finished(self, request: DeliveryRequest, outcome: DeliveryOutcome) -> DeliveryOutcome:
        """Count the message's outcome and log it (one `delivery.outcome` line), best effort.
        Bounces are counted where the DSN is made (the queue)."""
        self.best_effort.run(Step.METRICS, self._count_outcome, request, outcome)
        self.best_effort.run(Step.LOG, self._log_outcome, request, outcome)
        return outcome

    def _count_outcome(self, request: DeliveryRequest, outcome: DeliveryOutcome) -> None:
        if self.metrics is None:
            return
        for rcpt in outcome.rcpts:
            if rcpt.status is RcptStatus.DELIVERED:
                self.metrics.delivered.labels(tls="yes" if rcpt.tls else "no").inc()
            elif rcpt.status is RcptStatus.DEFERRED:
                self.metrics.deferred.labels(reason=rcpt.result_type or "other").inc()
            if request.flags.requiretls and (label := requiretls_label(rcpt)):
                self.metrics.requiretls.labels(outcome=label).inc()

    def _log_outcome(self, request: DeliveryRequest, outcome: DeliveryOutcome) -> None:
        loop = any("5.4.6" in r.reason for r in outcome.bounced)
        level = (
            log.error if loop else log.warning if outcome.deferred or outcome.bounced else log.info
        )
        fields: dict[str, object] = {}
        groups = (
            (RcptStatus.DELIVERED, outcome.delivered),
            (RcptStatus.DEFERRED, outcome.deferred),
            (RcptStatus.BOUNCED, outcome.bounced),
        )
        for status, done in groups:
            if done:
                fields[str(status)] = self.recipients(tuple(r.rcpt for r in done))
                fields[f"{status}_reason"] = "; ".join(sorted({r.reason for r in done}))
        if request.flags.requiretls:
            fields["requiretls"] = True
        level("delivery.outcome", unreachable=outcome.unreachable, **fields)

    def recipients(self, rcpts: tuple[str, ...]) -> list[str] | int:
        """Recipients as `[relay].log_recipients` lets them be logged (a count when not)."""
        return log_recipients(rcpts, self.log_recipients)

    async def _record_history(self, host: str, obs: Observation) -> None:
        if obs.ehlo_ok:
            # The store may be SQLite or a shared one: never block the event loop on it.
            await asyncio.to_thread(
                self.history.record,
                host,
                offered_starttls=obs.offered_starttls,
                valid_cert=obs.cert_valid is True,
                now=self.clock(),
            )

    def _emit_session(self, report: ReportAs, host: str, ip: str, attempt: Attempt) -> None:
        decision = attempt.decision
        self.sink.record(
            SessionResult(
                policy_domain=report.policy_domain,
                policy_type=report.policy_type,
                policy_strings=report.policy_strings,
                when=self.clock(),
                mx_host=host,
                receiving_ip=ip,
                sending_mta_ip=attempt.sending_ip,
                receiving_mx_helo=attempt.helo_name,
                result_type=decision.result_type,
                failure_reason_code=decision.reason_code if decision.result_type else "",
                additional_information=decision.reason if decision.result_type else "",
            )
        )

    def _count_session(
        self,
        domain: str,
        host: str,
        ip: str,
        attempt: Attempt,
        outcome: DeliveryOutcome | RcptOutcome,
    ) -> None:
        seen = seen_in(host, ip, attempt, outcome, now=self.clock(), domain=a_label(domain))
        if self.metrics is not None:
            went = "plaintext" if seen.plaintext else "tls" if _delivered_tls(outcome) else "none"
            self.metrics.mx_sessions.labels(kind=str(seen.kind), outcome=went).inc()
        if self.prevalence is not None:
            self.prevalence.record(seen)

    def _count_findings(self, attempt: Attempt) -> None:
        if self.metrics is not None:
            for finding in attempt.findings:
                self.metrics.findings.labels(kind=str(finding.kind)).inc()

    def _log_attempt(
        self,
        rcpts: tuple[str, ...],
        policy: EffectivePolicy,
        attempt: Attempt,
        outcome: DeliveryOutcome | RcptOutcome,
    ) -> None:
        session = attempt.session
        if isinstance(outcome, DeliveryOutcome):
            result = ",".join(sorted({str(r.status) for r in outcome.rcpts}))
        else:
            result = str(outcome.status)
        decision = attempt.decision
        failed = not decision.delivers or result != str(RcptStatus.DELIVERED)
        level = log.warning if attempt.findings or failed or decision.result_type else log.info
        level(
            "delivery.attempt",
            rcpts=self.recipients(rcpts),
            policy_mode=policy.mode,
            requiretls=policy.requiretls,
            action=str(decision.action),
            result_type=decision.result_type,
            outcome=result,
            reason=decision.reason if session is None else _outcome_reason(outcome),
            tls=session.tls if session else False,
            plaintext=decision.action is Action.DELIVER_PLAINTEXT,
            tls_version=session.tls_version if session else None,
            cipher=session.cipher if session else None,
            mx_helo=attempt.helo_name,
            findings=[f.as_log() for f in attempt.findings],
        )


class PrevalenceSink(Protocol):
    """Where sessions are counted for prevalence (`relay.prevalence.PrevalenceRecorder`)."""

    def record(self, seen: SessionSeen) -> None: ...


def seen_in(
    host: str,
    ip: str,
    attempt: Attempt,
    outcome: DeliveryOutcome | RcptOutcome,
    *,
    now: float,
    domain: str = "",
) -> SessionSeen:
    """One new session's prevalence facts: what EHLO offered, the findings, how mail went."""
    obs = attempt.obs
    failed_tls = obs.handshake_ok is False or obs.cert_valid is False
    plaintext = attempt.decision.action is Action.DELIVER_PLAINTEXT and _delivered(outcome)
    return session_seen(
        host,
        ip,
        when=now,
        offered_starttls=obs.offered_starttls,
        findings=attempt.findings,
        handshake_failure=str(obs.tls_result_type or "") if failed_tls else "",
        plaintext=plaintext,
        domain=domain,
    )


def _delivered(outcome: DeliveryOutcome | RcptOutcome) -> bool:
    rcpts = outcome.rcpts if isinstance(outcome, DeliveryOutcome) else (outcome,)
    return any(r.status is RcptStatus.DELIVERED for r in rcpts)


def _delivered_tls(outcome: DeliveryOutcome | RcptOutcome) -> bool:
    rcpts = outcome.rcpts if isinstance(outcome, DeliveryOutcome) else (outcome,)
    return any(r.status is RcptStatus.DELIVERED and r.tls for r in rcpts)


def requiretls_label(rcpt: RcptOutcome) -> str:
    """The `stsguard_requiretls_total` outcome of one recipient of a REQUIRETLS message ("" for
    a bounce that REQUIRETLS did not cause: the MX refused the recipient)."""
    if rcpt.status is RcptStatus.BOUNCED:
        return {"no-support": "bounced_no_support", "no-auth": "bounced_no_auth"}.get(
            rcpt.requiretls, ""
        )
    return str(rcpt.status)


def log_recipients(rcpts: tuple[str, ...], mode: bool | str) -> list[str] | int:
    """The addresses (mode true), a short sha256 of each ("hash"), or only their number (false)."""
    if mode == "hash":
        return [_short_hash(r) for r in rcpts]
    return list(rcpts) if mode is True else len(rcpts)


def _short_hash(address: str) -> str:
    return hashlib.sha256(address.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _outcome_reason(outcome: DeliveryOutcome | RcptOutcome) -> str:
    if isinstance(outcome, RcptOutcome):
        return outcome.reason
    return "; ".join(sorted({r.reason for r in outcome.rcpts}))
