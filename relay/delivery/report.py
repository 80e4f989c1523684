"""The reporting of each delivery attempt: TLS-RPT session results, remembered TLS, metrics, logs.

Every attempt of a message on an MX (a new or a reused session) emits exactly one `SessionResult`
(unless the message is a TLS-RPT report itself: RPT-10) and one `delivery.attempt` log line with
the TLS facts, the policy mode, the outcome and findings. An MX skipped before connecting (STS-11)
or not reachable at all emits none: no TLS session happened.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from detect.history import TlsHistoryStore
from mtasts.model import PolicyResult
from relay.decision import Decision, EffectivePolicy, Observation
from relay.delivery.model import DeliveryOutcome, DeliveryRequest, RcptOutcome, RcptStatus
from relay.delivery.negotiate import Attempt
from relay.metrics import Metrics
from tlsrpt_emit.model import PolicyType, ResultSink, ResultType, SessionResult

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
    ) -> None:
        self.history = history
        self.sink = sink
        self.clock = clock
        self.metrics = metrics

    def attempt(
        self,
        request: DeliveryRequest,
        host: str,
        ip: str,
        policy: EffectivePolicy,
        attempt: Attempt,
        outcome: DeliveryOutcome | RcptOutcome,
    ) -> None:
        """Everything one attempt on one MX address leaves behind."""
        if not attempt.reused:
            self._record_history(host, attempt.obs)
        if not request.no_tlsrpt and not request.domain.startswith("["):
            self._emit_session(request, host, ip, policy, attempt)
        self._log_attempt(policy, attempt, outcome)

    def policy_failure(self, request: DeliveryRequest, result: PolicyResult) -> None:
        """The policy could not be had (fetch or validation failure): one session result."""
        assert result.failure is not None
        policy = result.policy
        self.sink.record(
            SessionResult(
                policy_domain=request.domain,
                policy_type=PolicyType.STS if policy is not None else PolicyType.NO_POLICY_FOUND,
                policy_strings=policy.policy_strings if policy is not None else (),
                when=self.clock(),
                result_type=ResultType(result.failure.result_type),
                additional_information=result.failure.message,
            )
        )

    def refused(
        self, request: DeliveryRequest, host: str, policy: EffectivePolicy, decision: Decision
    ) -> None:
        """An MX not connected to because DANE forbade it (bogus TLSA: dnssec-invalid; dane-only
        without TLSA: dane-required): one session result, as RFC 8460 4.3 counts them."""
        if request.no_tlsrpt or decision.result_type is None:
            return
        self.sink.record(
            SessionResult(
                policy_domain=request.domain,
                policy_type=PolicyType.TLSA,
                policy_strings=_policy_strings(policy),
                when=self.clock(),
                mx_host=host,
                result_type=ResultType(decision.result_type),
                failure_reason_code=decision.reason_code,
                additional_information=decision.reason,
            )
        )

    def finished(self, outcome: DeliveryOutcome) -> DeliveryOutcome:
        """Count the message's outcome. Bounces are counted where the DSN is made (the queue)."""
        if self.metrics is not None:
            for rcpt in outcome.rcpts:
                if rcpt.status is RcptStatus.DELIVERED:
                    self.metrics.delivered.labels(tls="yes" if rcpt.tls else "no").inc()
                elif rcpt.status is RcptStatus.DEFERRED:
                    self.metrics.deferred.labels(reason=rcpt.result_type or "other").inc()
        return outcome

    def _record_history(self, host: str, obs: Observation) -> None:
        if obs.ehlo_ok:
            self.history.record(
                host,
                offered_starttls=obs.offered_starttls,
                valid_cert=obs.cert_valid is True,
                now=self.clock(),
            )

    def _emit_session(
        self,
        request: DeliveryRequest,
        host: str,
        ip: str,
        policy: EffectivePolicy,
        attempt: Attempt,
    ) -> None:
        decision = attempt.decision
        session = attempt.session
        self.sink.record(
            SessionResult(
                policy_domain=request.domain,
                policy_type=_policy_type(policy),
                policy_strings=_policy_strings(policy),
                when=self.clock(),
                mx_host=host,
                receiving_ip=ip,
                sending_mta_ip=session.mx.sending_ip if session is not None else "",
                receiving_mx_helo=attempt.helo_name,
                result_type=ResultType(decision.result_type) if decision.result_type else None,
                failure_reason_code=decision.reason_code if decision.result_type else "",
                additional_information=decision.reason if decision.result_type else "",
            )
        )

    def _log_attempt(
        self, policy: EffectivePolicy, attempt: Attempt, outcome: DeliveryOutcome | RcptOutcome
    ) -> None:
        session = attempt.session
        if isinstance(outcome, DeliveryOutcome):
            result = ",".join(sorted({str(r.status) for r in outcome.rcpts}))
        else:
            result = str(outcome.status)
        if self.metrics is not None:
            for finding in attempt.findings:
                self.metrics.findings.labels(kind=str(finding.kind)).inc()
        log.info(
            "delivery.attempt",
            policy_mode=policy.mode,
            action=str(attempt.decision.action),
            result_type=attempt.decision.result_type,
            outcome=result,
            reason=attempt.decision.reason if session is None else _outcome_reason(outcome),
            tls_version=session.tls_version if session else None,
            cipher=session.cipher if session else None,
            mx_helo=attempt.helo_name,
            findings=[f.as_log() for f in attempt.findings],
        )


def _policy_type(policy: EffectivePolicy) -> PolicyType:
    if policy.is_dane:
        return PolicyType.TLSA
    if policy.is_sts and policy.policy is not None:
        return PolicyType.STS
    return PolicyType.NO_POLICY_FOUND


def _policy_strings(policy: EffectivePolicy) -> tuple[str, ...]:
    """RFC 8460 4.4: the TLSA records in presentation form, or the STS policy's lines."""
    if policy.is_dane:
        return tuple(record.to_text() for record in policy.tlsa)
    if policy.is_sts and policy.policy is not None:
        return policy.policy.policy_strings
    return ()


def _outcome_reason(outcome: DeliveryOutcome | RcptOutcome) -> str:
    if isinstance(outcome, RcptOutcome):
        return outcome.reason
    return "; ".join(sorted({r.reason for r in outcome.rcpts}))
