"""The envelope's declared schema: older files read, unknown fields kept, and a must-understand
name this version does not know holds the message (never delivered, never rewritten)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from relay.config import Config
from relay.delivery.deliverer import DeliveryOutcome, DeliveryRequest
from relay.errors import SpoolError
from relay.queue import envelope
from relay.queue.envelope import (
    ENVELOPE_FIELDS,
    FLAG_FIELDS,
    SCHEMA_VERSION,
    decode_envelope,
    encode_envelope,
)
from relay.queue.runner import QueueRunner
from relay.queue.spool import MessageFlags, RecipientState, Spool

QID = "ABCDEFGHIJKLMNOP"
# An envelope as stsguard wrote it before the schema was versioned (version 1).
VERSION_1 = {
    "id": QID,
    "mail_from": "a@example.net",
    "recipients": [
        {
            "address": "b@example.org",
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": 1.0,
            "last_error": "",
        }
    ],
    "received_at": 1.0,
    "size": 5,
    "flags": {"no_tlsrpt": True},
}


def write_message(spool: Spool, raw: dict[str, object]) -> None:
    (spool.directory / "msg" / QID).write_bytes(json.dumps(raw).encode() + b"\nhello")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "queue", clock=lambda: 100.0)


def test_a_version_1_envelope_reads_with_defaults_and_is_written_as_the_current_version() -> None:
    message = decode_envelope(json.dumps(VERSION_1).encode())
    assert message.flags == MessageFlags(no_tlsrpt=True)
    assert (message.held, message.dsn_id, message.warned, message.history) == ("", "", False, ())
    raw = json.loads(encode_envelope(message))
    assert raw["schema"] == SCHEMA_VERSION
    assert "must_understand" not in raw


def test_unknown_fields_and_flags_are_kept_when_the_envelope_is_rewritten(spool: Spool) -> None:
    write_message(spool, {**VERSION_1, "schema": 9, "route": ["x"], "flags": {"hint": True}})
    spool.record(QID, deferred={"b@example.org": "451 later"}, next_attempt_at=50.0)
    raw = json.loads((spool.directory / "state" / f"{QID}.json").read_bytes())
    assert raw["route"] == ["x"]
    assert raw["flags"]["hint"] is True
    assert raw["recipients"][0]["last_error"] == "451 later"
    assert not spool.get(QID).held


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ({"flags": {"future": True}}, "flags.future"),
        ({"route": {"via": "mx.example"}}, "route"),  # a top-level field works the same way
    ],
)
def test_a_must_understand_name_this_version_does_not_know_holds_the_message(
    spool: Spool, extra: dict[str, object], name: str
) -> None:
    raw = {**VERSION_1, "schema": 9, **extra}
    write_message(spool, {**raw, "must_understand": [name]})
    before = (spool.directory / "msg" / QID).read_bytes()
    message = spool.get(QID)
    assert message.not_understood == (name,)
    assert message.held == f"needs a newer stsguard: it must understand {name}"
    assert [m.id for m in spool.list()] == [QID]  # `queue list` shows it, held
    with capture_logs() as logs:
        (entry,) = spool.scan()
    assert entry.held
    assert [e["event"] for e in logs] == ["queue.envelope_not_understood"]
    for change in (
        lambda: spool.release(QID, now=1.0),
        lambda: spool.record(QID, delivered=["b@example.org"]),
    ):
        with pytest.raises(SpoolError, match=f"does not know {re.escape(name)}"):
            change()
    assert spool.flush() == 0
    assert (spool.directory / "msg" / QID).read_bytes() == before  # not lost, not changed
    assert not (spool.directory / "state" / f"{QID}.json").exists()
    spool.delete(QID)  # an administrator may still delete it


async def test_the_queue_manager_never_delivers_a_message_it_does_not_understand(
    spool: Spool,
) -> None:
    raw = {**VERSION_1, "flags": {"future": True}, "must_understand": ["flags.future"]}
    write_message(spool, raw)

    class Refuses:
        async def deliver(self, request: DeliveryRequest) -> DeliveryOutcome:
            raise AssertionError("delivered a message it does not understand")

        async def expiry_decision(self, *args: object, **kwargs: object) -> object:
            raise AssertionError("not expected")

    runner = QueueRunner(Config(), spool, Refuses(), clock=lambda: 100.0)  # type: ignore[arg-type]
    with capture_logs() as logs:
        task = asyncio.create_task(runner.run())
        await asyncio.wait_for(runner.loaded.wait(), 5)
        runner.wake(QID)  # told of it again (another process queued it): still held
        for _ in range(20):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert runner.index.held == {QID}
    assert [e["event"] for e in logs].count("queue.envelope_not_understood") == 1
    assert spool.get(QID).recipients[0].status is RecipientState.PENDING


def test_a_set_must_understand_flag_is_listed_for_older_readers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(envelope, "_MUST_UNDERSTAND_FLAGS", ("no_tlsrpt",))
    message = decode_envelope(json.dumps(VERSION_1).encode())
    assert json.loads(encode_envelope(message))["must_understand"] == ["flags.no_tlsrpt"]
    plain = decode_envelope(json.dumps({**VERSION_1, "flags": {}}).encode())
    assert "must_understand" not in json.loads(encode_envelope(plain))


def test_the_schema_table_documents_every_declared_field() -> None:
    doc = envelope.__doc__ or ""
    rows = re.findall(r"^``([a-z0-9_.]+)``\s+(\d+)\s+(yes)?", doc, re.MULTILINE)
    documented = {name: (int(since), must == "yes") for name, since, must in rows}
    declared = {name: (spec.since, spec.must_understand) for name, spec in ENVELOPE_FIELDS.items()}
    declared |= {
        f"flags.{name}": (spec.since, spec.must_understand) for name, spec in FLAG_FIELDS.items()
    }
    assert documented == declared
    assert max(since for since, _ in declared.values()) == SCHEMA_VERSION
