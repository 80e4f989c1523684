"""How a REQUIRETLS message (RFC 8689) ends when no MX took it, and when its DSN goes without
REQUIRETLS. The rules themselves are `relay.decision`'s (`requiretls_verdict`)."""

from __future__ import annotations

from dataclasses import replace

from relay.decision import REQUIRETLS_TEMPORARY, RequireTlsFailure, requiretls_verdict
from relay.delivery.model import DeliveryOutcome, DeliveryRequest, RcptOutcome, RcptStatus


def requiretls_outcome(
    request: DeliveryRequest,
    last: RcptOutcome,
    failures: tuple[RequireTlsFailure, ...],
    policy_temporary: bool,
    policy_id: str | None,
) -> DeliveryOutcome:
    """No MX took a REQUIRETLS message: bounce now when retrying cannot help, else defer
    (4.7.10)."""
    bounce = requiretls_verdict(request.domain, failures, policy_temporary=policy_temporary)
    if bounce is not None:
        why = "no-support" if "5.7.30" in bounce else "no-auth"
        rcpts = tuple(
            RcptOutcome(r, RcptStatus.BOUNCED, bounce, None, last.mx_host, False, why)
            for r in request.rcpts
        )
        return DeliveryOutcome(request.queue_id, rcpts, policy_id)
    reason = REQUIRETLS_TEMPORARY.format(reason=last.reason)
    deferred = replace(last, status=RcptStatus.DEFERRED, reason=reason)
    return DeliveryOutcome(
        request.queue_id, tuple(replace(deferred, rcpt=r) for r in request.rcpts), policy_id
    )


def relaxed_bounce(request: DeliveryRequest, outcome: DeliveryOutcome) -> bool:
    """True for a DSN (null sender) of a REQUIRETLS message that REQUIRETLS alone bounced."""
    return (
        request.flags.requiretls
        and not request.mail_from
        and bool(outcome.bounced)
        and all(r.requiretls in ("no-support", "no-auth") for r in outcome.bounced)
    )
