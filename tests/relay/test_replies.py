"""Replies by class (relay/delivery/replies.py): a table, no network."""

from __future__ import annotations

import pytest

from relay.delivery.replies import ReplyKind, Stage, judge_reply, reply_problem

A, G, T, P, E = (
    ReplyKind.ACCEPTED,
    ReplyKind.GO_AHEAD,
    ReplyKind.TEMPORARY,
    ReplyKind.PERMANENT,
    ReplyKind.PROTOCOL_ERROR,
)


@pytest.mark.parametrize(
    ("stage", "code", "kind"),
    [
        (Stage.MAIL, 250, A),
        (Stage.MAIL, 251, A),
        (Stage.MAIL, 200, A),
        (Stage.RCPT, 252, A),
        (Stage.RCPT, 220, A),
        (Stage.RCPT, 451, T),
        (Stage.RCPT, 550, P),
        (Stage.RCPT, 354, E),
        (Stage.RCPT, 199, E),
        (Stage.RCPT, 600, E),
        (Stage.RCPT, -1, E),
        (Stage.DATA, 354, G),
        (Stage.DATA, 250, E),
        (Stage.DATA, 351, E),
        (Stage.DATA, 452, T),
        (Stage.DATA, 554, P),
        (Stage.END_OF_DATA, 250, A),
        (Stage.END_OF_DATA, 251, A),
        (Stage.END_OF_DATA, 354, E),
        (Stage.END_OF_DATA, 421, T),
        (Stage.END_OF_DATA, 552, P),
    ],
)
def test_judge_reply(stage: Stage, code: int, kind: ReplyKind) -> None:
    verdict = judge_reply(stage, code, "text")
    assert verdict.kind is kind
    assert str(code) in verdict.reason


@pytest.mark.parametrize(
    ("buffer", "problem"),
    [
        (b"250 ok\r\n", None),
        (b"250\r\n", None),
        (b"250-a\r\n250-b\r\n250 c\r\n", None),
        (b"250-a\r\n250", None),  # not complete yet
        (b"250-a\r\n550 b\r\n", "disagree"),
        (b"hello\r\n", "not an SMTP reply"),
        (b"2_0 ok\r\n", "not an SMTP reply"),
        (b" 25 ok\r\n", "not an SMTP reply"),
        (b"250ok\r\n", "not an SMTP reply"),
        (b"199 early\r\n", "not an SMTP reply"),
        (b"260 six\r\n", "not an SMTP reply"),
        (b"250 ok\r\n550 next reply, not this one's business\r\n", None),
    ],
)
def test_reply_problem(buffer: bytes, problem: str | None) -> None:
    found = reply_problem(buffer)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found
