"""Slow clients: a deadline per command line and a minimum DATA rate, as Postfix 3.7 has them
(``smtpd_per_request_deadline``, ``smtpd_min_data_rate``). Without them a client that sends one
byte a second is never idle and holds its slot for the whole ``session_timeout``.

- A command line must be complete within ``command_deadline`` seconds of its first byte (the
  wait before the first byte is ``idle_timeout``'s business).
- In DATA the client has a budget of ``command_deadline`` seconds: time spent is taken off, every
  byte received adds ``1 / min_data_rate`` seconds, and the budget never grows beyond
  ``command_deadline`` (Postfix's rule: a fast start banks nothing for a trickle later). An empty
  budget ends the session.

`RequestClock` is the pure bookkeeping (`now` passed in); `RequestTimer` runs it on the event loop
with one timer per session, armed only while a line is unfinished or DATA is under way, and
checked lazily (bytes that arrive never move the timer; it re-arms itself when it fires early).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

COMMAND_DEADLINE = "command_deadline"
MIN_DATA_RATE = "min_data_rate"


@dataclass(slots=True)
class RequestClock:
    """Where a session stands against its deadlines. `min_data_rate` 0: no DATA rate check."""

    deadline: float
    min_data_rate: float
    line_started: float | None = None  # first byte of an unfinished command line
    data_budget: float | None = None  # seconds left in DATA; None outside DATA
    data_checked: float = 0.0

    def command_bytes(self, data: bytes, now: float) -> None:
        newline = data.rfind(b"\n")
        if newline < 0:
            if self.line_started is None:
                self.line_started = now
        else:
            self.line_started = None if newline == len(data) - 1 else now

    def data_started(self, now: float) -> None:
        self.line_started = None
        self.data_budget = self.deadline if self.min_data_rate > 0 else None
        self.data_checked = now

    def data_bytes(self, size: int, now: float) -> None:
        if self.data_budget is not None:
            self.data_budget = min(
                self.deadline,
                self.data_budget - (now - self.data_checked) + size / self.min_data_rate,
            )
            self.data_checked = now

    def data_ended(self) -> None:
        self.data_budget = None

    def due(self, now: float) -> tuple[str, float | None]:
        """(the limit that ran out, or ""; seconds until the next check, or None: nothing to
        check until more bytes come)."""
        if self.data_budget is not None:
            left = self.data_budget - (now - self.data_checked)
            return (MIN_DATA_RATE, 0.0) if left <= 0 else ("", left)
        if self.line_started is not None:
            left = self.line_started + self.deadline - now
            return (COMMAND_DEADLINE, 0.0) if left <= 0 else ("", left)
        return "", None


class RequestTimer:
    """`RequestClock` on an event loop: calls `expired(limit)` once a deadline has passed."""

    __slots__ = ("_handle", "_in_data", "clock", "expired", "loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, clock: RequestClock, expired: Callable[[str], None]
    ) -> None:
        self.loop = loop
        self.clock = clock
        self.expired = expired
        self._handle: asyncio.TimerHandle | None = None
        self._in_data = False

    def received(self, data: bytes) -> None:
        now = self.loop.time()
        if self._in_data:
            self.clock.data_bytes(len(data), now)
        else:
            self.clock.command_bytes(data, now)
        if self._handle is None:
            self._arm(now)

    def data_started(self) -> None:
        self._in_data = True
        self.clock.data_started(self.loop.time())
        if self._handle is None:
            self._arm(self.loop.time())

    def data_ended(self) -> None:
        self._in_data = False
        self.clock.data_ended()
        self.clock.line_started = None

    def line_discarded(self) -> None:
        """The bytes of the unfinished command line were thrown away (plaintext behind
        STARTTLS): the next line's deadline starts with its own first byte."""
        self.clock.line_started = None

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, now: float) -> None:
        limit, wait = self.clock.due(now)
        if limit:
            self.expired(limit)
        elif wait is not None:
            self._handle = self.loop.call_at(now + wait, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._arm(self.loop.time())
