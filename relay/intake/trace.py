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

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*((?:[^\r\n]*)(?:\r\n[ \t][^\r\n]*)*)", re.I | re.M)
_RECEIVED = re.compile(rb"^received:((?:[^\r\n]*)(?:\r\n[ \t][^\r\n]*)*)", re.I | re.M)
# "... with ESMTP id 4Xyz123; date" (RFC 5321 section 4.4 ID clause); sendmail and Exim alike.
_ID_CLAUSE = re.compile(rb"\bid[ \t\r\n]+<?([A-Za-z0-9][A-Za-z0-9._@=-]{0,99})>?", re.I)
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


def _printable(value: bytes) -> str:
    text = _UNPRINTABLE.sub(" ", value.decode("utf-8", "replace")).strip()
    return text[:VALUE_LIMIT]


def message_trace(data: bytes) -> MessageTrace:
    """The Message-ID and the topmost ``Received:`` field's queue id of a message (as the
    client sent it, before our own ``Received:`` is added)."""
    head = _header_section(data)
    found = _MESSAGE_ID.search(head)
    message_id = _printable(found.group(1)) if found else ""
    received = _RECEIVED.search(head)
    upstream = _ID_CLAUSE.search(received.group(1)) if received else None
    return MessageTrace(message_id, _printable(upstream.group(1)) if upstream else "")
