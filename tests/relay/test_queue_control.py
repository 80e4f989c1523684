"""The relay's end of the control socket, with a real spool and a runner's memory."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.config import config_from_dict
from relay.queue.control import ControlServer, ask
from relay.queue.runner import QueueRunner
from relay.queue.spool import Spool, new_queue_id


class NoDeliveries:
    async def deliver(self, request: object) -> object:
        raise AssertionError("not expected")

    async def expiry_decision(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("not expected")


async def test_a_request_naming_many_messages_is_answered(tmp_path: Path) -> None:
    """`queue delete -` with the ids of a large queue: one line far past asyncio's 64 KiB."""
    spool = Spool(tmp_path / "queue")
    kept = spool.put("a@x.test", ["b@y.test"], b"x")
    gone = spool.put("a@x.test", ["b@y.test"], b"x")
    config = config_from_dict({"relay": {"hostname": "relay.test"}})
    runner = QueueRunner(config, spool, NoDeliveries())  # type: ignore[arg-type]
    server = ControlServer(tmp_path / "c.sock", spool, runner, clock=lambda: 0.0)
    await server.start()
    try:
        unknown = [new_queue_id() for _ in range(20_000)]
        request = {"op": "delete", "ids": [*unknown, gone]}
        reply = await asyncio.to_thread(ask, server.path, request)
    finally:
        await server.stop()
    assert reply is not None
    assert (reply["ok"], reply["messages"], len(reply["unknown"])) == (True, 1, 20_000)
    assert [m.id for m in spool.list()] == [kept]
