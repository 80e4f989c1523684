"""The outcome is final once the MX has answered the final dot: a failure of what follows
(remembered TLS, TLS-RPT counting, metrics, logging, parking the session) is contained, counted and
logged once, and a failure inside the relay before the dot is a deferral, never an exception.
Real lab MX hosts on loopback (a fake deliverer for the queue's side); the failures are injected
into the parts around them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import structlog
from structlog.testing import LogCapture

from detect.errors import HistoryStoreError
from detect.history import MemoryTlsHistoryStore
from detect.prevalence import SessionSeen
from lab.dns import LabDns
from relay.delivery.deliverer import Deliverer, DeliveryOutcome, DeliveryRequest, RcptStatus
from relay.delivery.model import every_rcpt
from relay.metrics import Metrics
from relay.queue.dispatch import Dispatcher
from relay.queue.envelope import QueuedMessage, Recipient
from relay.queue.index import MemoryBudget
from relay.queue.passes import Pass
from relay.queue.scheduler import Job
from relay.queue.spool import Spool
from tests.relay.test_delivery import StartMx, make_config, mx_records, request
from tlsrpt_emit.model import MemorySink, SessionResult

MX1 = "mx1.example.org"


class FullHistory(MemoryTlsHistoryStore):
    """Remembered TLS on a disk that filled up: every write fails."""

    def record(self, host: str, *, offered_starttls: bool, valid_cert: bool, now: float) -> None:
        raise HistoryStoreError("state.sqlite3: database or disk is full")


class BrokenSink(MemorySink):
    def record(self, result: SessionResult) -> None:
        raise ValueError("'starttls-not-suported' is not a valid ResultType")


class BrokenPrevalence:
    def record(self, seen: SessionSeen) -> None:
        raise RuntimeError("prevalence counter broke")


def _raise(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("injected")


def _break_metrics(d: Deliverer) -> None:
    metrics = d.reporter.metrics
    assert metrics is not None
    metrics.delivered.labels = _raise  # type: ignore[method-assign]


def _break_pool(d: Deliverer) -> None:
    d.pool.park = _raise  # type: ignore[method-assign]


def _break_reporting(d: Deliverer) -> None:
    """Something after the dot that is not one of the contained steps raises."""
    d.reporter.attempt = _raise  # type: ignore[assignment,method-assign]


class _FailingFormatter:
    """A log pipeline that fails on the lines written after the final dot."""

    def __call__(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        if event["event"] in ("delivery.attempt", "delivery.outcome"):
            raise KeyError("formatter")
        return event


@contextlib.contextmanager
def logs(*processors: Any) -> Iterator[list[dict[str, Any]]]:
    capture = LogCapture()
    structlog.configure(processors=[*processors, capture])
    try:
        yield capture.entries
    finally:
        structlog.reset_defaults()


@pytest.fixture
def deliverer_with(lab_ca: Any, lab_resolver: Any) -> Callable[..., tuple[Deliverer, Metrics]]:
    from relay.tls import client_context

    def make(
        port: int, *, history: Any = None, sink: Any = None, prevalence: Any = None
    ) -> tuple[Deliverer, Metrics]:
        metrics = Metrics()
        deliverer = Deliverer(
            make_config(port),
            resolver=lab_resolver,
            policy_service=_NoPolicy(),
            history_store=history or MemoryTlsHistoryStore(),
            sink=sink or MemorySink(),
            ssl_context=client_context(str(lab_ca.ca_file)),
            metrics=metrics,
            prevalence=prevalence,
        )
        return deliverer, metrics

    return make


class _NoPolicy:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def get(self, domain: str) -> Any:
        from mtasts.model import PolicyResult, PolicySource

        if self.fail:
            raise RuntimeError("policy service bug")
        return PolicyResult(domain, None, PolicySource.NONE)


@pytest.mark.parametrize(
    ("case", "step"),
    [
        ("history", "history"),  # the disk full: HistoryStoreError after the 250
        ("sink", "tlsrpt"),  # ValueError from a result type, or any sink failure
        ("prevalence", "prevalence"),  # counting the session for `detect stats`
        ("metrics", "metrics"),
        ("pool", "pool"),
        ("reporting", "delivery"),  # caught by the guard in `deliver`
        ("log", "log"),
    ],
)
async def test_failure_after_the_final_dot_leaves_the_message_delivered_once(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer_with: Callable[..., tuple[Deliverer, Metrics]],
    case: str,
    step: str,
) -> None:
    mx = await start_mx(MX1, "127.0.9.1")
    mx_records(lab_dns, (10, MX1))
    deliverer, metrics = deliverer_with(
        mx.port,
        history=FullHistory() if case == "history" else None,
        sink=BrokenSink() if case == "sink" else None,
        prevalence=BrokenPrevalence() if case == "prevalence" else None,
    )
    {"metrics": _break_metrics, "pool": _break_pool, "reporting": _break_reporting}.get(
        case, lambda _d: None
    )(deliverer)
    processors = [_FailingFormatter()] if case == "log" else []
    with logs(*processors) as entries:
        outcomes = [await deliverer.deliver(request(n)) for n in (1, 2)]
    await deliverer.close()
    for outcome in outcomes:
        assert [r.status for r in outcome.rcpts] == [RcptStatus.DELIVERED]
    assert len(mx.messages) == 2  # each message once
    counted = sum(
        metrics.value("stsguard_best_effort_errors_total", {"step": step, "error": error})
        for error in ("HistoryStoreError", "ValueError", "RuntimeError", "KeyError")
    )
    assert counted >= 1  # the failure is counted ...
    told = [e for e in entries if e["event"] == "delivery.best_effort_failed"]
    if case != "log":  # ... and logged once, not per message (a broken log pipeline: stderr)
        assert [e["step"] for e in told] == [step]


async def test_failure_before_the_final_dot_is_a_deferral_not_an_exception(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer_with: Callable[..., tuple[Deliverer, Metrics]],
) -> None:
    mx = await start_mx(MX1, "127.0.9.2")
    mx_records(lab_dns, (10, MX1))
    deliverer, metrics = deliverer_with(mx.port)
    deliverer.policy_service = _NoPolicy(fail=True)
    with logs() as entries:
        outcome = await deliverer.deliver(request())
    [rcpt] = outcome.rcpts
    assert rcpt.status is RcptStatus.DEFERRED
    assert rcpt.reason == "4.3.0 internal error: RuntimeError: policy service bug"
    assert mx.messages == []
    assert metrics.value("stsguard_delivery_errors_total", {"kind": "RuntimeError"}) == 1
    assert [e["event"] for e in entries if e["log_level"] == "error"] == ["delivery.internal_error"]


class _BrokenHistogram:
    def observe(self, _value: float) -> None:
        raise RuntimeError("injected")


class _Delivered:
    """A deliverer whose MX took every message."""

    async def deliver(self, request: DeliveryRequest) -> DeliveryOutcome:
        return every_rcpt(request, RcptStatus.DELIVERED, "250 2.0.0 ok")

    async def expiry_decision(self, domain: str, **_kwargs: Any) -> Any:
        raise AssertionError("not asked")


async def test_the_queue_keeps_a_delivery_whose_metric_fails() -> None:
    metrics = Metrics()
    metrics.delivery_delay = cast(Any, _BrokenHistogram())
    dispatcher = Dispatcher(
        make_config(25),
        cast(Spool, None),  # the data is in the pass: the spool is not read
        _Delivered(),
        MemoryBudget(),
        metrics=metrics,
        clock=lambda: 0.0,
    )
    message = QueuedMessage("q1", "alice@sender.test", (Recipient("bob@example.org"),), 0.0, 10)
    job = Job("q1", "example.org", ("bob@example.org",))
    result = await dispatcher.run(Pass(message, b"Subject: x\r\n\r\nx\r\n", jobs_left=1), job)
    assert result.delivered == ["bob@example.org"]
    assert not result.deferred
    labels = {"step": "metrics", "error": "RuntimeError"}
    assert metrics.value("stsguard_best_effort_errors_total", labels) == 1


async def test_failure_before_the_dot_with_a_broken_log_pipeline_is_still_a_deferral(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer_with: Callable[..., tuple[Deliverer, Metrics]],
) -> None:
    mx = await start_mx(MX1, "127.0.9.3")
    mx_records(lab_dns, (10, MX1))
    deliverer, _metrics = deliverer_with(mx.port)
    deliverer.policy_service = _NoPolicy(fail=True)

    def broken(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("formatter")

    with logs(broken):
        outcome = await deliverer.deliver(request())
    [rcpt] = outcome.rcpts
    assert rcpt.status is RcptStatus.DEFERRED
    assert mx.messages == []


async def test_each_new_session_is_counted_for_prevalence_once(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer_with: Callable[..., tuple[Deliverer, Metrics]],
) -> None:
    """Two messages over one (pooled) session: one session counted, bounded metric labels."""
    mx = await start_mx(MX1, "127.0.9.4")
    mx_records(lab_dns, (10, MX1))
    seen: list[SessionSeen] = []

    class Recorder:
        def record(self, one: SessionSeen) -> None:
            seen.append(one)

    deliverer, metrics = deliverer_with(mx.port, prevalence=Recorder())
    for n in (1, 2):
        await deliverer.deliver(request(n))
    await deliverer.close()
    assert len(mx.messages) == 2
    assert [(s.host, s.address, s.offered_starttls, s.downgraded, s.domain) for s in seen] == [
        (MX1, "127.0.9.4", True, False, "example.org")
    ]
    assert metrics.value("stsguard_mx_sessions_total", {"kind": "clean", "outcome": "tls"}) == 1
