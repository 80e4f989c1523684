"""What the queue hands the deliverer (`DeliveryRequest`) and gets back (`DeliveryOutcome`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from relay.message_flags import NO_FLAGS, MessageFlags
from tlsrpt_emit.model import ResultType


@dataclass(frozen=True, slots=True)
class DeliveryRequest:
    """One message for recipients of one domain. `flags.no_tlsrpt` marks a TLS-RPT report
    (RPT-10)."""

    queue_id: str
    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes
    flags: MessageFlags = NO_FLAGS  # e.g. REQUIRETLS (RFC 8689), TLS-Required: No

    @property
    def domain(self) -> str:
        return self.rcpts[0].rpartition("@")[2].lower().rstrip(".")


class RcptStatus(StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class RcptOutcome:
    """What became of one recipient. `result_type` is the TLS-RPT result type of a TLS failure."""

    rcpt: str
    status: RcptStatus
    reason: str = ""
    result_type: ResultType | None = None
    mx_host: str = ""
    tls: bool = False
    requiretls: str = ""  # a REQUIRETLS message: why it could not go (`RequireTlsFailure`)


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """Per recipient: delivered, deferred or bounced. `policy_id` is the `_mta-sts` record id of
    the MTA-STS policy applied, which the queue keeps for the STS-12 check at expiry.
    `unreachable` is True when MX hosts were tried and none could be connected to at all
    (refused, timed out, no address): the queue's dead-destination signal."""

    queue_id: str
    rcpts: tuple[RcptOutcome, ...]
    policy_id: str | None = None
    unreachable: bool = False

    @property
    def tls_failure(self) -> bool:
        """True when a deferral was a TLS failure (it has a TLS-RPT result type)."""
        return any(r.result_type for r in self.deferred)

    def _with(self, status: RcptStatus) -> tuple[RcptOutcome, ...]:
        return tuple(r for r in self.rcpts if r.status is status)

    @property
    def delivered(self) -> tuple[RcptOutcome, ...]:
        return self._with(RcptStatus.DELIVERED)

    @property
    def deferred(self) -> tuple[RcptOutcome, ...]:
        return self._with(RcptStatus.DEFERRED)

    @property
    def bounced(self) -> tuple[RcptOutcome, ...]:
        return self._with(RcptStatus.BOUNCED)


def every_rcpt(
    request: DeliveryRequest, status: RcptStatus, reason: str, mx_host: str = "", tls: bool = False
) -> DeliveryOutcome:
    """The same outcome for every recipient of `request`."""
    return DeliveryOutcome(
        request.queue_id,
        tuple(RcptOutcome(r, status, reason, None, mx_host, tls) for r in request.rcpts),
    )
