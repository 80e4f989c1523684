"""What a message's own headers say about where it came from, for the ``intake.queued`` line:
its ``Message-ID`` and the queue id the upstream MTA gave it in its ``Received:`` field
(Postfix writes ``by mx.example.org (Postfix) with ESMTP id 4Xyz...``), so an administrator can
join our log with the upstream's the way Postfix's own logs join.

Pure and cheap: one scan of the header section, values cut short and made printable (the
headers are the client's, anything may be in them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Header fields are looked at in the first 64 KiB only: a header section is rarely a tenth of it.
HEADER_SCAN_LIMIT = 65_536
# Longest value logged; a Message-ID of RFC 5322 is rarely a hundred characters.
VALUE_LIMIT = 200

# "... with ESMTP id 4Xyz123; date" (RFC 5321 section 4.4 ID clause); sendmail and Exim alike.
_ID_CLAUSE = re.compile(rb"\bid[ \t]+<?([A-Za-z0-9][A-Za-z0-9._@=-]{0,99})>?", re.I)
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class MessageTrace:
    """``message_id`` and ``upstream_queue_id`` as logged; "" when the message has none."""

    message_id: str = ""
    upstream_queue_id: str = ""


def _header_section(data: bytes) -> bytes:
    head = data[:HEADER_SCAN_LIMIT]
    end = head.find(b"\r\n\r\n")
    return head if end < 0 else head[: end + 2]


def _field_value(head: bytes, lowered: bytes, name: bytes) -> bytes | None:
    """The (unfolded) value of the first `name` field (lower case, with its colon), or None."""
    if lowered.startswith(name):
        start = len(name)
    else:
        at = lowered.find(b"\n" + name)
        if at < 0:
            return None
        start = at + 1 + len(name)
    end = start
    while True:
        line_end = head.find(b"\r\n", end)
        if line_end < 0:
            return head[start:]
        if head[line_end + 2 : line_end + 3] not in (b" ", b"\t"):
            return head[start:line_end].replace(b"\r\n", b" ")
        end = line_end + 2


def _printable(value: bytes) -> str:
    text = _UNPRINTABLE.sub(" ", value.decode("utf-8", "replace")).strip()
    return text[:VALUE_LIMIT]


def message_trace(data: bytes) -> MessageTrace:
    """The Message-ID and the topmost ``Received:`` field's queue id of a message (as the
    client sent it, before our own ``Received:`` is added)."""
    head = _header_section(data)
    lowered = head.lower()
    message_id = _field_value(head, lowered, b"message-id:")
    received = _field_value(head, lowered, b"received:")
    upstream = _ID_CLAUSE.search(received) if received is not None else None
    return MessageTrace(
        _printable(message_id) if message_id is not None else "",
        _printable(upstream.group(1)) if upstream else "",
    )
