"""Pure checks of a message as the intake receives it, and the ``Received:`` line it adds:
bare line ends (SMTP smuggling, TLS-06), ``TLS-Required: No`` and ``Require-TLS-ESMTP: yes``
(RFC 8689)."""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import re

_BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_HELO_SAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")


def bare_line_end(data: bytes) -> int | None:
    """Offset of the first CR or LF that is not part of a CRLF pair, or None (TLS-06)."""
    pairs = data.count(b"\r\n")
    if data.count(b"\r") == pairs == data.count(b"\n"):
        return None  # every CR and every LF is in a pair (pairs cannot overlap): the usual case
    m = _BARE_LINE_END.search(data)
    return m.start() if m else None


def _header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def require_tls_esmtp(data: bytes) -> bool:
    """True when the message has a ``Require-TLS-ESMTP: yes`` header (Postfix 3.11 adds it to a
    message received with REQUIRETLS, so the request survives a hop without the parameter)."""
    block = _header_block(data)
    if b"require-tls-esmtp" not in block.lower():
        return False
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    return any(str(v).strip().lower() == "yes" for v in headers.get_all("Require-TLS-ESMTP", []))


def tls_required_no(data: bytes) -> bool:
    """True when the message has a ``TLS-Required: No`` header (RFC 8689 section 5)."""
    block = _header_block(data)
    if b"tls-required" not in block.lower():
        return False  # nearly every message: no need to parse the headers
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    return any(str(v).strip().lower() == "no" for v in headers.get_all("TLS-Required", []))


def received_header(
    *,
    helo: str,
    client: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    rcpts: list[str],
    now: float,
) -> bytes:
    """Our ``Received:`` trace line (RFC 5321 section 4.4); `for` only with a single recipient."""
    helo_text = _HELO_SAFE.sub("", helo)[:255] or "unknown"
    when = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    # Only checked addresses get here; `for` is left out all the same for anything unprintable.
    recipient = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 and rcpts[0].isprintable() else ""
    line = (
        f"Received: from {helo_text} ([{client}])\r\n"
        f"\tby {hostname} (stsguard) with {protocol} id {queue_id}{recipient};\r\n"
        f"\t{when}\r\n"
    )
    return line.encode("utf-8", "surrogateescape")
