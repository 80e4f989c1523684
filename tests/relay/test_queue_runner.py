"""The queue runner with a real spool and a recording deliverer: mail accepted here is delivered
from memory, once, and a backlog past the memory budget is read back from disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.config import Config
from relay.decision import Decision
from relay.delivery.deliverer import DeliveryOutcome, DeliveryRequest, RcptOutcome, RcptStatus
from relay.queue import runner as queue_runner
from relay.queue.runner import QueueRunner
from relay.queue.spool import Spool


class CountingSpool(Spool):
    """Counts how often the message bytes are read back from disk."""

    reads = 0

    def read_data(self, queue_id: str) -> bytes:
        self.reads += 1
        return super().read_data(queue_id)


class Recorder:
    """A deliverer that records each request and answers with `status` for every recipient."""

    def __init__(self, status: RcptStatus = RcptStatus.DELIVERED) -> None:
        self.status = status
        self.requests: list[DeliveryRequest] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def deliver(self, request: DeliveryRequest) -> DeliveryOutcome:
        await self.gate.wait()
        self.requests.append(request)
        reason = "" if self.status is RcptStatus.DELIVERED else "451 try later"
        return DeliveryOutcome(
            request.queue_id, tuple(RcptOutcome(r, self.status, reason) for r in request.rcpts)
        )

    async def expiry_decision(
        self, domain: str, *, tls_failure: bool, failed_policy_id: str | None
    ) -> Decision:
        raise AssertionError("not expected in these tests")


async def settle(spool: Spool, runner: QueueRunner, want_empty: bool = True) -> None:
    for _ in range(300):
        if not runner._busy and (bool(spool.list()) is not want_empty):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the queue did not settle")


@pytest.fixture
def spool(tmp_path: Path) -> CountingSpool:
    return CountingSpool(tmp_path / "queue")


async def test_submitted_mail_is_delivered_from_memory_once(spool: CountingSpool) -> None:
    deliverer = Recorder()
    runner = QueueRunner(Config(), spool, deliverer)
    task = asyncio.create_task(runner.run())
    try:
        message = spool.new_message("a@x.test", ["b@y.test", "c@z.test"], 5)
        assert spool.commit([(message, b"hello")]) == [None]
        runner.submit(message, b"hello")
        runner.wake(message.id)  # told of it again: still one delivery per domain
        await settle(spool, runner)
    finally:
        task.cancel()
    assert sorted(r.rcpts for r in deliverer.requests) == [("b@y.test",), ("c@z.test",)]
    assert all(r.data == b"hello" for r in deliverer.requests)
    assert spool.reads == 0
    assert runner.budget.held_bytes == 0


async def test_past_the_memory_budget_mail_is_read_back(
    spool: CountingSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_runner, "HELD_BYTES_MAX", 10)
    deliverer = Recorder()
    deliverer.gate.clear()  # a backlog: nothing finishes until all are submitted
    runner = QueueRunner(Config(), spool, deliverer)
    task = asyncio.create_task(runner.run())
    try:
        messages = [spool.new_message("a@x.test", ["b@y.test"], 6) for _ in range(3)]
        spool.commit([(m, b"body-%d" % n) for n, m in enumerate(messages)])
        for n, m in enumerate(messages):
            runner.submit(m, b"body-%d" % n)
        await asyncio.sleep(0.05)
        deliverer.gate.set()
        await settle(spool, runner)
    finally:
        task.cancel()
    assert sorted(r.data for r in deliverer.requests) == [b"body-0", b"body-1", b"body-2"]
    assert spool.reads == 2  # the first fitted the 10-byte budget; the others came from disk
    assert runner.budget.held_bytes == 0


async def test_a_deferred_submission_stays_queued_with_its_reason(spool: CountingSpool) -> None:
    runner = QueueRunner(Config(), spool, Recorder(RcptStatus.DEFERRED))
    task = asyncio.create_task(runner.run())
    try:
        message = spool.new_message("a@x.test", ["b@y.test"], 1)
        spool.commit([(message, b"x")])
        runner.submit(message, b"x")
        await settle(spool, runner, want_empty=False)
        for _ in range(100):
            if spool.get(message.id).recipients[0].attempts:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    [rcpt] = spool.get(message.id).recipients
    assert rcpt.attempts == 1
    assert rcpt.last_error == "451 try later"
    assert rcpt.next_attempt_at > message.received_at
    # The new state survives a restart.
    assert Spool(spool.directory).get(message.id).recipients == (rcpt,)
