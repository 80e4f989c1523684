"""Work beside a delivery whose failure must not change its outcome: remembered TLS, TLS-RPT
counting, metrics, log lines, parking the session for reuse.

Once the MX has answered the final dot the outcome is final (a 250 means the message arrived:
deferring it would send it twice). Each such step runs through `BestEffort.run`: an exception is
contained there, counted (``stsguard_best_effort_errors_total{step,error}``) and logged once per
(step, error class) for the life of the process, never per message. Even the logging of the
failure is contained: a broken log formatter must not undo a delivery either.

`final_answer_scope` and `answered` mark, within one delivery, the moment the MX answered the
message; `BestEffort.outcome_after` turns an exception nothing below handled into the outcome:
that answer if there is one, otherwise a deferral.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from enum import StrEnum
from typing import ParamSpec

import structlog

from relay.delivery.model import DeliveryOutcome, DeliveryRequest, RcptStatus, every_rcpt
from relay.delivery.session import WIRE_ERRORS
from relay.metrics import Metrics

log = structlog.get_logger(__name__)

P = ParamSpec("P")

# The MX's answer to the message within one delivery (a context variable: each delivery task
# has its own): from then on it is the outcome, whatever fails in the relay around it.
_final_answer: ContextVar[DeliveryOutcome | None] = ContextVar("final_answer", default=None)


@contextlib.contextmanager
def final_answer_scope() -> Iterator[None]:
    """One delivery: no answer yet."""
    token = _final_answer.set(None)
    try:
        yield
    finally:
        _final_answer.reset(token)


def answered(outcome: DeliveryOutcome) -> None:
    """The MX answered the message: from here on, best effort only."""
    _final_answer.set(outcome)


class Step(StrEnum):
    """What best-effort work failed (a metric label)."""

    HISTORY = "history"  # remembered TLS (detect.history)
    TLSRPT = "tlsrpt"  # counting the session for TLS-RPT
    PREVALENCE = "prevalence"  # counting the session for downgrade prevalence
    METRICS = "metrics"
    LOG = "log"
    POOL = "pool"  # parking the session for the next message
    DELIVERY = "delivery"  # anything else of the relay's after the MX answered the message


class BestEffort:
    """Runs best-effort steps, counting their failures in `metrics` by (step, error class)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._told: set[tuple[Step, str]] = set()

    def run(self, step: Step, fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
        """`fn(*args, **kwargs)`, an exception of which is only counted and logged."""
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            self.failed(step, exc)

    async def run_async(
        self, step: Step, fn: Callable[P, Awaitable[object]], *args: P.args, **kwargs: P.kwargs
    ) -> None:
        """`await fn(*args, **kwargs)`, an exception of which is only counted and logged."""
        try:
            await fn(*args, **kwargs)
        except Exception as exc:
            self.failed(step, exc)

    def outcome_after(self, request: DeliveryRequest, exc: Exception) -> DeliveryOutcome:
        """The outcome after an exception no layer below handled: the MX's answer if it had
        answered the message (never deliver it twice), otherwise a deferral."""
        error = f"{type(exc).__name__}: {exc}"
        final = _final_answer.get()
        if final is not None:
            self.failed(Step.DELIVERY, exc)
            return final
        if isinstance(exc, WIRE_ERRORS):
            # The session layer translates these; one that slipped through is still only a
            # temporary failure of this attempt, never a crash of the queue's delivery.
            with contextlib.suppress(Exception):  # nor may a broken log pipeline make it one
                log.error("delivery.session_error", error=error)
            return every_rcpt(request, RcptStatus.DEFERRED, f"session error: {error}")
        with contextlib.suppress(Exception):
            if self.metrics is not None:
                self.metrics.delivery_errors.labels(kind=type(exc).__name__).inc()
            log.exception("delivery.internal_error", error=error)
        return every_rcpt(request, RcptStatus.DEFERRED, f"4.3.0 internal error: {error}"[:300])

    def failed(self, step: Step, exc: Exception) -> None:
        """Count `exc`; log it the first time this step fails with this class of error."""
        error = type(exc).__name__
        # A broken metric must not hide the failure's log line, nor a broken log pipeline it.
        with contextlib.suppress(Exception):
            if self.metrics is not None:
                self.metrics.best_effort_errors.labels(step=str(step), error=error).inc()
        if (step, error) in self._told:
            return
        self._told.add((step, error))
        try:
            log.error("delivery.best_effort_failed", step=str(step), error=f"{error}: {exc}")
        except Exception:
            # The log pipeline itself is what failed: one plain line to stderr, still only once.
            with contextlib.suppress(Exception):
                print(f"stsguard: {step} failed: {error}: {exc}", file=sys.stderr)
