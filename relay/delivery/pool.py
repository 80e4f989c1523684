"""Sessions kept open between messages, and how many may be open to one MX host at a time.

A session that carried a message is parked under (MX host, address, effective policy) for
`idle_timeout` seconds and reused (RSET) for the next message to the same MX under the same
policy; `concurrency` bounds the sessions per MX host (`delivery.concurrency_per_destination`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from relay.delivery.negotiate import Established
from relay.errors import SessionError
from relay.tls_rules import EffectivePolicy

_Key = tuple[str, str, EffectivePolicy]


class SessionPool:
    """Idle sessions for reuse, and a slot (semaphore) per MX host."""

    def __init__(
        self, *, concurrency: int, idle_timeout: float, clock: Callable[[], float]
    ) -> None:
        self.concurrency = concurrency
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._idle: dict[_Key, list[Established]] = {}

    def slot(self, host: str) -> asyncio.Semaphore:
        """The semaphore that bounds concurrent sessions to `host`."""
        return self._slots.setdefault(host, asyncio.Semaphore(self.concurrency))

    def park(self, host: str, ip: str, policy: EffectivePolicy, session: Established) -> None:
        """Keep a healthy session for the next message to this MX (connection reuse)."""
        if not session.mx.is_connected:
            return
        session.idle_since = self.clock()
        self._idle.setdefault((host, ip, policy), []).append(session)

    async def take(self, host: str, ip: str, policy: EffectivePolicy) -> Established | None:
        """A fresh idle session to this MX address under this policy, reset (RSET), or None."""
        idle = self._idle.get((host, ip, policy), [])
        while idle:
            session = idle.pop()
            if not (self._fresh(session, self.clock()) and session.mx.is_connected):
                await session.mx.quit()
                continue
            try:
                reply = await session.mx.command(b"RSET")
            except SessionError:
                continue  # it closed itself
            if reply.code == 250:
                return session
            session.mx.close()
        return None

    async def prune(self) -> None:
        """QUIT idle sessions older than `idle_timeout`."""
        now = self.clock()
        stale: list[Established] = []
        # Take the stale sessions out before the first await: deliveries running meanwhile
        # add and take sessions too, and must never be handed one being closed.
        for key, sessions in list(self._idle.items()):
            keep = [s for s in sessions if self._fresh(s, now)]
            stale += [s for s in sessions if not self._fresh(s, now)]
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        for session in stale:
            await session.mx.quit()

    def _fresh(self, session: Established, now: float) -> bool:
        """True while a parked session is within `idle_timeout`."""
        return now - session.idle_since <= self.idle_timeout

    async def close(self) -> None:
        """QUIT every idle session (at shutdown)."""
        idle, self._idle = self._idle, {}
        for sessions in idle.values():
            for session in sessions:
                await session.mx.quit()
