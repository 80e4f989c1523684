"""The pipelined reader (`relay.delivery.starttls.pipelined`) on aiosmtplib's protocol, fed by
hand: however the replies of a group are cut into segments, and whenever those arrive, it reads
the same replies in order; malformed, oversized, late and lost replies end the group."""

from __future__ import annotations

import asyncio
import itertools

import aiosmtplib
import pytest
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery.starttls import _StrictReplyProtocol, pipelined, strict_replies

Replies = list[tuple[int, list[str]]]


class _Transport(asyncio.Transport):
    """Collects what the client writes; `close` ends the connection like a lost peer."""

    def __init__(self, protocol: _StrictReplyProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.protocol.connection_lost(None)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _client(timeout: float = 2.0) -> tuple[aiosmtplib.SMTP, _StrictReplyProtocol, _Transport]:
    """A client connected to a hand-fed transport, between commands (as after EHLO)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=9, start_tls=False, timeout=timeout)
    protocol = _StrictReplyProtocol(loop=asyncio.get_running_loop())
    transport = _Transport(protocol)
    protocol.connection_made(transport)
    protocol._response_pending = False
    client.protocol = protocol
    client.transport = transport
    return client, protocol, transport


def _wire(replies: Replies) -> bytes:
    lines = []
    for code, texts in replies:
        for n, text in enumerate(texts):
            sep = " " if n == len(texts) - 1 else "-"
            lines.append(f"{code}{sep}{text}\r\n".encode())
    return b"".join(lines)


COMMANDS = [(b"MAIL", b"FROM:<a@b.example>"), (b"RCPT", b"TO:<c@d.example>"), (b"DATA",)]

replies_strategy = st.lists(
    st.tuples(
        st.sampled_from([250, 251, 354, 421, 450, 452, 503, 550, 554]),
        st.lists(st.text(alphabet="abz09.-_", min_size=1, max_size=8), min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(replies=replies_strategy, data=st.data())
def test_any_segmentation_yields_the_same_replies_in_order(replies: Replies, data: st.DataObject):
    stream = _wire(replies)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    segments = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    # How many turns of the event loop pass before each segment: 0 lets several come before
    # the reader wakes, or while it holds a reply it has not returned yet.
    pauses = data.draw(st.lists(st.integers(0, 2), min_size=len(segments), max_size=len(segments)))
    commands = [(b"NOOP",)] * len(replies)

    async def run() -> list[aiosmtplib.SMTPResponse]:
        client, protocol, transport = _client()

        async def feed() -> None:
            for segment, pause in zip(segments, pauses, strict=True):
                for _ in range(pause):
                    await asyncio.sleep(0)
                protocol.data_received(segment)

        got, _ = await asyncio.gather(pipelined(client, commands), feed())
        assert transport.written == [b"NOOP\r\n" * len(replies)]  # the group in one write
        assert protocol._buffer == bytearray()
        return got

    got = asyncio.run(run())
    assert [(r.code, r.message) for r in got] == [(c, "\n".join(t)) for c, t in replies]


async def test_replies_that_came_before_the_reader_asked_are_kept() -> None:
    client, protocol, _ = _client()
    task = asyncio.create_task(pipelined(client, COMMANDS))
    await asyncio.sleep(0)  # written; waiting for the first reply
    protocol.data_received(b"250 mail\r\n")  # wakes the reader, which has not run yet
    protocol.data_received(b"250 rcpt\r\n354 go\r\n")  # aiosmtplib alone would drop this
    got = await asyncio.wait_for(task, 1)
    assert [r.code for r in got] == [250, 250, 354]


async def test_a_malformed_reply_in_the_group_is_a_protocol_error() -> None:
    client, protocol, _ = _client()
    task = asyncio.create_task(pipelined(client, COMMANDS))
    await asyncio.sleep(0)
    protocol.data_received(b"250 mail\r\n250-rcpt\r\n550 rcpt\r\n354 go\r\n")
    with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
        await asyncio.wait_for(task, 1)
    assert caught.value.code == -1
    assert "disagree" in caught.value.message
    assert not protocol._pipelining  # the protocol reads as aiosmtplib again


async def test_too_much_kept_for_the_group_is_refused() -> None:
    client, protocol, _ = _client()
    task = asyncio.create_task(pipelined(client, COMMANDS))
    await asyncio.sleep(0)
    protocol.data_received(b"250 mail\r\n")
    protocol.data_received(b"250-" + b"x" * (MAX_RESPONSE_LENGTH * 3) + b"\r\n")
    with pytest.raises(aiosmtplib.SMTPResponseException, match="too long"):
        await asyncio.wait_for(task, 1)
    assert protocol._buffer == bytearray()


async def test_a_missing_reply_times_out_and_closes_the_client() -> None:
    client, protocol, transport = _client(timeout=0.05)
    task = asyncio.create_task(pipelined(client, COMMANDS))
    await asyncio.sleep(0)
    protocol.data_received(b"250 mail\r\n250 rcpt\r\n")
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await asyncio.wait_for(task, 1)
    assert transport.closing
    assert client.protocol is None


async def test_a_connection_lost_in_the_group_raises() -> None:
    client, protocol, transport = _client()
    task = asyncio.create_task(pipelined(client, COMMANDS))
    await asyncio.sleep(0)
    protocol.data_received(b"250 mail\r\n")
    transport.close()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await asyncio.wait_for(task, 1)


async def test_a_421_closes_the_client_after_the_group() -> None:
    client, protocol, transport = _client()
    task = asyncio.create_task(pipelined(client, COMMANDS))
    await asyncio.sleep(0)
    protocol.data_received(b"421 4.3.2 bye\r\n421 4.3.2 bye\r\n421 4.3.2 bye\r\n")
    assert [r.code for r in await asyncio.wait_for(task, 1)] == [421, 421, 421]
    assert transport.closing


async def test_a_command_with_a_line_break_is_refused_unsent() -> None:
    client, _, transport = _client()
    with pytest.raises(ValueError, match="control character"):
        await pipelined(client, [(b"RCPT", b"TO:<a@b>\r\nDATA")])
    assert transport.written == []


async def test_pipelining_needs_the_strict_protocol() -> None:
    client, _, _ = _client()
    strict_replies(client)  # what MxSession.open does; idempotent
    assert isinstance(client.protocol, _StrictReplyProtocol)
    client.protocol.__class__ = aiosmtplib.protocol.SMTPProtocol  # type: ignore[assignment]
    with pytest.raises(TypeError):
        await pipelined(client, COMMANDS)
