"""The queue manager's own rules with a scripted deliverer and a fake clock: back-off, expiry,
one DSN per message, the mail-loop limit, a DSN that cannot be built, a failed state write, and
the log lines an administrator greps (`queue.bounced` with `status=expired`, `queue.removed`
with its delays). Milliseconds each: nothing waits for the wall clock."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from relay.config import Config, config_from_dict
from relay.decision import Action, Decision
from relay.delivery.model import DeliveryOutcome, DeliveryRequest, RcptOutcome, RcptStatus
from relay.errors import SpoolError
from relay.queue import bouncer as queue_bouncer
from relay.queue.control import ControlServer
from relay.queue.runner import QueueRunner
from relay.queue.spool import QueuedMessage, Spool

SENDER = "alice@upstream.test"
START = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class ScriptedDeliverer:
    """Answers per recipient domain: `answers[domain]` is (status, reason) or an exception to
    raise; mail to SENDER's domain (the DSNs) is delivered."""

    def __init__(self, answers: dict[str, tuple[RcptStatus, str] | Exception]) -> None:
        self.answers = answers
        self.requests: list[DeliveryRequest] = []

    async def deliver(self, request: DeliveryRequest) -> DeliveryOutcome:
        self.requests.append(request)
        answer = self.answers.get(request.domain, (RcptStatus.DELIVERED, "250 ok"))
        if isinstance(answer, Exception):
            raise answer
        status, reason = answer
        return DeliveryOutcome(
            request.queue_id, tuple(RcptOutcome(r, status, reason) for r in request.rcpts)
        )

    async def expiry_decision(
        self, domain: str, *, tls_failure: bool, failed_policy_id: str | None
    ) -> Decision:
        return Decision(Action.BOUNCE, None, "queue lifetime expired")

    def to(self, domain: str) -> list[DeliveryRequest]:
        return [r for r in self.requests if r.domain == domain]


def make_config(**delivery: Any) -> Config:
    return config_from_dict(
        {
            "relay": {"hostname": "relay.test"},
            "delivery": {"retry_initial": "10m", "retry_max": "1h", **delivery},
        }
    )


class Queue:
    """A runner on a real spool in a temp directory, driven by a fake clock."""

    def __init__(self, runner: QueueRunner, spool: Spool, clock: Clock) -> None:
        self.runner, self.spool, self.clock = runner, spool, clock

    def put(self, rcpts: list[str], *, received: int = 0) -> str:
        hops = b"".join(b"Received: from hop%d.test\r\n" % n for n in range(received))
        return self.spool.put(SENDER, rcpts, hops + b"Subject: hi\r\n\r\nbody\r\n")

    async def settle(self, done: Callable[[], bool] = lambda: True) -> None:
        """Let the runner work until it is idle (and `done`); the spool's threads are real."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 30  # a bound for a loaded machine, not a measure of speed
        while loop.time() < give_up:
            await asyncio.sleep(0.001)
            if not self.runner._busy and done():
                return
        raise AssertionError(
            f"the queue did not settle: {self.spool.list()} {self.runner._busy} "
            f"{len(self.runner.due)} {self.runner.due.next_time()}"
        )

    async def at(self, seconds: float) -> None:
        """Move the clock `seconds` past START and let the runner act on it."""
        self.clock.now = START + seconds
        self.runner.poke()
        await self.settle()

    def dsns(self) -> list[QueuedMessage]:
        return [m for m in self.spool.list() if m.flags.is_bounce]


@pytest.fixture
async def queue_for(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    tasks: list[asyncio.Task[None]] = []

    async def start(deliverer: ScriptedDeliverer, config: Config | None = None) -> Queue:
        clock = Clock()
        spool = Spool(tmp_path / "queue", clock=clock)
        runner = QueueRunner(config or make_config(), spool, deliverer, clock=clock)
        tasks.append(asyncio.create_task(runner.run()))
        await asyncio.wait_for(runner.loaded.wait(), 5)
        return Queue(runner, spool, clock)

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def test_an_exception_in_delivery_backs_off_then_expires_with_one_dsn(
    queue_for: Callable[..., Any],
) -> None:
    deliverer = ScriptedDeliverer({"broken.test": UnicodeEncodeError("ascii", "b", 0, 1, "no")})
    queue = await queue_for(deliverer, make_config(queue_lifetime="1h"))
    with capture_logs() as logs:
        qid = queue.put(["bob@broken.test"])
        queue.runner.wake(qid)
        await queue.settle(lambda: len(deliverer.requests) == 1)
        for minutes in (5, 9, 10, 29, 30, 59, 69):  # back-off 10, 20, 40 min: tries at 10, 30
            await queue.at(minutes * 60)
        assert len(deliverer.to("broken.test")) == 3
        await queue.at(70 * 60)  # past queue_lifetime (1 h): the fourth try is the last
        await queue.settle(lambda: not queue.spool.list())
    assert len(deliverer.to("broken.test")) == 4
    (dsn_request,) = deliverer.to("upstream.test")
    assert b"UnicodeEncodeError" in dsn_request.data.replace(b"\r\n ", b" ")
    assert b"queue lifetime expired" in dsn_request.data.replace(b"\r\n ", b" ")
    (bounced,) = events(logs, "queue.bounced")
    assert bounced["log_level"] == "warning"
    assert bounced["status"] == "expired"
    assert bounced["rcpts"] == ["bob@broken.test"]
    assert "UnicodeEncodeError" in bounced["reason"]
    assert "queue lifetime expired" in bounced["reason"]
    removed = [e for e in events(logs, "queue.removed") if e["queue_id"] == qid]
    # Received at START, first tried at once, the last pass at 70 min.
    assert removed == [
        {
            "event": "queue.removed",
            "log_level": "info",
            "queue_id": qid,
            "nrcpt": 1,
            "delay": 4200.0,
            "delays": "0.00/4200.00/0.00",
        }
    ]


async def test_one_dsn_for_a_message_to_many_failing_domains(
    queue_for: Callable[..., Any],
) -> None:
    domains = [f"d{n}.test" for n in range(30)]
    answers: dict[str, Any] = {d: (RcptStatus.BOUNCED, "550 5.1.1 no such user") for d in domains}
    deliverer = ScriptedDeliverer(answers)
    queue = await queue_for(deliverer)
    with capture_logs() as logs:
        queue.runner.wake(queue.put([f"bob@{d}" for d in domains]))
        await queue.settle(lambda: not queue.spool.list())
    (dsn,) = deliverer.to("upstream.test")
    assert sorted(line for line in dsn.data.split(b"\r\n") if line.startswith(b"Final-Rec")) == [
        f"Final-Recipient: rfc822; bob@{d}".encode() for d in sorted(domains)
    ]
    (bounced,) = events(logs, "queue.bounced")  # one line: one reason for all 30
    assert (bounced["status"], len(bounced["rcpts"])) == ("bounced", 30)
    assert bounced["reason"] == "550 5.1.1 no such user"


async def test_more_than_max_hops_bounces_with_5_4_6(queue_for: Callable[..., Any]) -> None:
    deliverer = ScriptedDeliverer({})
    queue = await queue_for(deliverer, make_config(max_hops=5))
    queue.runner.wake(queue.put(["bob@loop.test"], received=5))
    queue.runner.wake(queue.put(["carol@loop.test"], received=6))
    await queue.settle(lambda: not queue.spool.list())
    assert [r.rcpts for r in deliverer.to("loop.test")] == [("bob@loop.test",)]
    (dsn,) = deliverer.to("upstream.test")
    assert b"Status: 5.4.6" in dsn.data
    assert b"carol@loop.test" in dsn.data


async def test_a_message_whose_dsn_cannot_be_built_is_held(
    queue_for: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_dsn(*args: Any, **kwargs: Any) -> bytes:
        raise ValueError("a header that cannot be parsed")

    monkeypatch.setattr(queue_bouncer, "build_dsn", broken_dsn)
    deliverer = ScriptedDeliverer({"reject.test": (RcptStatus.BOUNCED, "550 5.1.1 no user")})
    queue = await queue_for(deliverer)
    queue.runner.wake(queue.put(["bob@reject.test"]))
    await queue.settle(lambda: any(m.held for m in queue.spool.list()))
    await queue.at(7 * 86400)  # a held message is never tried again, nor expired
    assert len(deliverer.requests) == 1
    (held,) = queue.spool.list()
    assert "its DSN cannot be built" in held.held
    assert held.failed


async def test_a_failed_state_write_backs_off_and_does_not_deliver_again(
    queue_for: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[float] = []
    deliverer = ScriptedDeliverer({"later.test": (RcptStatus.DEFERRED, "451 4.3.0 try later")})
    queue = await queue_for(deliverer)

    def disk_full(self: Spool, *args: Any, **kwargs: Any) -> Any:
        writes.append(queue.clock.now - START)
        raise SpoolError(f"cannot update: {OSError(errno.ENOSPC, 'No space left on device')}")

    monkeypatch.setattr(Spool, "record", disk_full)
    queue.runner.wake(queue.put(["bob@later.test"]))
    await queue.settle(lambda: len(writes) == 1)
    for second in range(1, 8):
        await queue.at(second)
    # Written again after 1, 2, 4 s (back-off from 1 s), and the MX was asked once.
    assert writes == [0, 1, 3, 7]
    assert len(deliverer.requests) == 1


async def test_a_delivered_message_logs_removed_with_its_delays(
    queue_for: Callable[..., Any],
) -> None:
    deliverer = ScriptedDeliverer({"later.test": (RcptStatus.DEFERRED, "451 try later")})
    queue = await queue_for(deliverer)
    with capture_logs() as logs:
        qid = queue.put(["bob@later.test"])
        await queue.at(2)  # the runner hears of it 2 s after intake: first try at 2 s
        queue.runner.wake(qid)
        await queue.settle(lambda: len(deliverer.requests) == 1)
        deliverer.answers.clear()  # now the MX takes it
        await queue.at(2 + 600)
        await queue.settle(lambda: not queue.spool.list())
    (removed,) = events(logs, "queue.removed")
    assert (removed["delay"], removed["delays"]) == (602.0, "2.00/600.00/0.00")
    assert not events(logs, "queue.bounced")


async def test_flush_finds_mail_another_program_queued_without_telling_the_relay(
    queue_for: Callable[..., Any], tmp_path: Path
) -> None:
    deliverer = ScriptedDeliverer({})
    queue = await queue_for(deliverer)
    qid = queue.put(["bob@quiet.test"])  # the relay was not told (no wake)
    await queue.at(3600)
    assert deliverer.requests == []  # it never rescans the spool by itself
    server = ControlServer(tmp_path / "c.sock", queue.spool, queue.runner, clock=queue.clock)
    reply = await server.handle({"op": "flush", "ids": []})
    assert reply["messages"] >= 1
    await queue.settle(lambda: not queue.spool.list())
    assert [r.queue_id for r in deliverer.requests] == [qid]
