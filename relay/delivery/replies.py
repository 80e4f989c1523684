"""SMTP replies by class (RFC 5321 4.2), without I/O.

Any 2xx to MAIL or RCPT is acceptance (251 and 252 included: DATA follows), a 354 to DATA lets
the message go, a 2xx to the end of data is delivery; 4xx is a temporary and 5xx a permanent
failure of that recipient. Anything else (a code outside 2xx-5xx, a 3xx where none belongs, a
line that is not a reply, a multi-line reply whose codes disagree) is a protocol error of the MX:
a temporary failure of that MX, never a verdict on the recipient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# RFC 5321 4.2: Reply-code = %x32-35 %x30-35 %x30-39, then SP, "-" or the end of the line.
_REPLY_LINE = re.compile(rb"[2-5][0-5][0-9](?:[ -]|$)")


class Stage(StrEnum):
    """The command a reply answers."""

    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_DATA = "end of data"


class ReplyKind(StrEnum):
    ACCEPTED = "accepted"  # 2xx to MAIL, RCPT or the end of data
    GO_AHEAD = "go-ahead"  # 354 to DATA
    TEMPORARY = "temporary"  # 4xx
    PERMANENT = "permanent"  # 5xx
    PROTOCOL_ERROR = "protocol-error"  # not a reply this command can have


@dataclass(frozen=True, slots=True)
class ReplyVerdict:
    kind: ReplyKind
    reason: str


def judge_reply(stage: Stage, code: int, text: str) -> ReplyVerdict:
    """What the reply `code` to `stage` means. aiosmtplib reports a malformed reply as code -1."""
    reason = f"{code} {text}"
    if 200 <= code <= 599:
        kind = {4: ReplyKind.TEMPORARY, 5: ReplyKind.PERMANENT}.get(code // 100)
        if kind is not None:
            return ReplyVerdict(kind, reason)
        if stage is Stage.DATA and code == 354:
            return ReplyVerdict(ReplyKind.GO_AHEAD, reason)
        if stage is not Stage.DATA and code // 100 == 2:
            return ReplyVerdict(ReplyKind.ACCEPTED, reason)
    shown = " / ".join(text.splitlines())[:200]
    return ReplyVerdict(
        ReplyKind.PROTOCOL_ERROR, f"protocol error: reply {code} {shown!r} to {stage}"
    )


def reply_problem(buffer: bytes) -> str | None:
    """Why the first complete reply in `buffer` is not a well-formed SMTP reply, or None (it is,
    or it is not complete yet). Codes of a multi-line reply must all be the same."""
    first: bytes | None = None
    offset = 0
    while (end := buffer.find(b"\n", offset)) != -1:
        line = buffer[offset:end].rstrip(b"\r")
        offset = end + 1
        if not _REPLY_LINE.match(line):
            return f"not an SMTP reply line: {line[:100]!r}"
        if first is None:
            first = line[:3]
        elif line[:3] != first:
            return f"multi-line reply codes disagree: {first.decode()} and {line[:3].decode()}"
        if line[3:4] != b"-":
            return None
    return None
