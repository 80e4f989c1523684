"""The DATA body read in runs of lines (`relay.intake.data.read_body`) gives what aiosmtpd's
line-by-line ``smtp_DATA`` gives: the same message, the same reply, the same bytes left for the
next command, however the bytes arrive."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.intake.data import TOO_LONG, TOO_MUCH, end_line, read_body, unstuffed

LINE_LIMIT = 1001  # aiosmtpd's line_length_limit, the stream's limit


async def _aiosmtpd_reads(chunks: list[bytes], size_limit: int | None) -> tuple[object, bytes]:
    """aiosmtpd 1.4's own smtp_DATA on a stub session: (the content or the reply, what is left)."""
    replies: list[str] = []
    seen: list[bytes] = []

    class Stub(SMTP):
        async def push(self, status: str) -> None:  # type: ignore[override]
            replies.append(status)

        async def _call_handler_hook(self, command: str, *args: object) -> str:
            assert self.envelope is not None
            seen.append(bytes(self.envelope.original_content or b""))
            return "250 taken"

    class Handler:
        async def handle_DATA(self, *args: object) -> str:
            return "250 taken"

    smtp = Stub(Handler(), data_size_limit=size_limit, loop=asyncio.get_running_loop())
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    smtp._reader = reader
    smtp.transport = object()  # type: ignore[assignment]
    smtp.session = smtp._create_session()
    smtp.session.host_name = "client"
    smtp.envelope = smtp._create_envelope()
    smtp.envelope.rcpt_tos.append("a@b.example")
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_data(b"NEXT\r\n")
    await smtp.smtp_DATA("")
    result: object = seen[0] if seen else replies[-1]
    reader.feed_eof()
    return result, await reader.read()


async def _ours(chunks: list[bytes], size_limit: int | None) -> tuple[object, bytes]:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_data(b"NEXT\r\n")
    body = await read_body(reader, size_limit=size_limit, line_limit=LINE_LIMIT)
    reader.feed_eof()
    return body, await reader.read()


async def _fed_in_turn(chunks: list[bytes], size_limit: int | None) -> tuple[object, bytes]:
    """`read_body` while the chunks arrive one at a time (it waits between them)."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    task = asyncio.create_task(read_body(reader, size_limit=size_limit, line_limit=LINE_LIMIT))
    for chunk in chunks:
        reader.feed_data(chunk)
        await asyncio.sleep(0)
    reader.feed_data(b"NEXT\r\n")
    body = await task
    reader.feed_eof()
    return body, await reader.read()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


_LINES = st.lists(
    st.one_of(
        st.sampled_from([b"", b".", b"..", b". x", b"x\n.", b"\r", b"Subject: x", b"a" * 999]),
        st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"")),
        st.integers(1000, 2500).map(lambda n: b"y" * n),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(
    lines=_LINES,
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    size_limit=st.sampled_from([None, 0, 10, 200, 3000]),
)
def test_same_as_aiosmtpd(lines: list[bytes], cuts: list[int], size_limit: int | None) -> None:
    data = b"".join(line + b"\r\n" for line in lines) + b".\r\n"
    chunks = _split(data, cuts)

    async def both() -> None:
        expected = await _aiosmtpd_reads(chunks, size_limit)
        assert await _ours(chunks, size_limit) == expected
        assert await _fed_in_turn(chunks, size_limit) == expected

    asyncio.run(both())


def test_replies_and_end_line() -> None:
    assert TOO_LONG.startswith("500 ")
    assert TOO_MUCH.startswith("552 ")
    assert end_line(b".\r\n") == 0
    assert end_line(b"a\r\n.\r\nMAIL") == 3
    assert end_line(b"a\r\n..\r\n") == -1
    assert unstuffed(b"..a\r\n.\r\n..\r\nb\r\n") == b".a\r\n\r\n.\r\nb\r\n"


def test_a_cancelled_read_takes_nothing_more() -> None:
    async def run() -> bytes:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        reader.feed_data(b"partial line")
        task = asyncio.create_task(read_body(reader, size_limit=None, line_limit=LINE_LIMIT))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reader.feed_eof()
        return await reader.read()

    assert asyncio.run(run()) == b"partial line"
