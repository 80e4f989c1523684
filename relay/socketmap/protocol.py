"""Socketmap requests and replies (Postfix `socketmap_table(5)`), without I/O.

A request is ``name key``: the map name chosen in main.cf (``socketmap:inet:HOST:PORT:name``)
and the key. A reply starts with a status word: ``OK data``, ``NOTFOUND `` (nothing found),
``TEMP reason``, ``TIMEOUT reason`` or ``PERM reason`` (Postfix treats the last three as a
temporary table error: the message waits).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from relay.socketmap.errors import SocketmapProtocolError


class Dialect(StrEnum):
    """What the map name asks for: plain TLS policies, or with Postfix >= 3.10's TLSRPT
    attributes (older versions reject those attributes)."""

    POSTFIX = "postfix"
    TLSRPT = "tlsrpt"


@dataclass(frozen=True, slots=True)
class Request:
    name: str
    key: str


def parse_request(payload: bytes) -> Request:
    """``name key`` from one netstring payload. A payload without a space is no request."""
    text = payload.decode("utf-8", errors="replace")
    name, space, key = text.partition(" ")
    if not space or not name:
        raise SocketmapProtocolError(f"not 'name key': {text[:40]!r}")
    return Request(name, key)


NOTFOUND = "NOTFOUND "  # the trailing space is part of the protocol's spelling


def ok(data: str) -> str:
    return f"OK {data}"


def temp(reason: str) -> str:
    return f"TEMP {_one_line(reason)}"


def timeout(reason: str) -> str:
    return f"TIMEOUT {_one_line(reason)}"


def perm(reason: str) -> str:
    return f"PERM {_one_line(reason)}"


def _one_line(reason: str) -> str:
    """A reason as Postfix logs it: printable ASCII, one line, not over-long."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in reason)
    return cleaned[:200]
