"""One socketmap request to one reply: map name, key, facts, answer, metric and log line."""

from __future__ import annotations

import time

import structlog

from relay.socketmap.answer import MapAnswer, answer, map_domain
from relay.socketmap.lookup import MapLookup
from relay.socketmap.metrics import SocketmapMetrics
from relay.socketmap.protocol import NOTFOUND, Dialect, Request, perm, temp

log = structlog.get_logger(__name__)

MAX_LOGGED = 100_000  # domains whose last answer is remembered for the log


class SocketmapService:
    """Answers requests through `lookup`; counts them in `metrics` and logs a domain's answer
    the first time it is given (and when it changes), not per query."""

    def __init__(self, lookup: MapLookup, metrics: SocketmapMetrics | None = None) -> None:
        self.lookup = lookup
        self.metrics = metrics
        self._last: dict[tuple[str, str], str] = {}

    async def reply(self, request: Request) -> str:
        started = time.perf_counter()
        found = await self._answer(request)
        if self.metrics is not None:
            self.metrics.observe(found.kind, time.perf_counter() - started)
        return found.reply

    async def _answer(self, request: Request) -> MapAnswer:
        try:
            dialect = Dialect(request.name)
        except ValueError:
            names = ", ".join(d.value for d in Dialect)
            return MapAnswer(
                perm(f"unknown map name {request.name!r} (use {names})"), "unknown-map"
            )
        domain = map_domain(request.key)
        if domain is None:
            return MapAnswer(NOTFOUND, "not-a-domain")
        try:
            facts = await self.lookup.facts(domain)
        except Exception as exc:  # a look-up bug must not end the connection: Postfix retries
            log.error("socketmap.lookup_error", domain=domain, error=repr(exc))
            return MapAnswer(temp("look-up failed"), "temp")
        found = answer(facts, dialect)
        self._log_first(domain, dialect, found)
        return found

    def _log_first(self, domain: str, dialect: Dialect, found: MapAnswer) -> None:
        key = (domain, dialect.value)
        if self._last.get(key) == found.reply:
            return
        if len(self._last) >= MAX_LOGGED:
            self._last.clear()
        self._last[key] = found.reply
        log.info(
            "socketmap.answer",
            domain=domain,
            map=dialect.value,
            answer=found.kind,
            reply=found.reply if len(found.reply) <= 300 else found.reply[:297] + "...",
        )
        if found.refused:
            log.warning("socketmap.policy_lines_refused", domain=domain, lines=list(found.refused))
