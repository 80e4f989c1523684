"""One socketmap request to one reply: map name, key, facts, answer, metric and log line.

A reply once worked out is kept, framed, for as long as its facts are fresh (`MapLookup`'s
`fresh_for`) and the config is the same object: `reply_now` answers a repeated request from that
memo without a look-up, an allocation beyond the dictionary probe, or a suspension. The memo is
keyed by the request's netstring as Postfix frames it, so that a read holding exactly one request
is answered without being decoded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from relay.socketmap.answer import MapAnswer, answer, map_domain
from relay.socketmap.errors import SocketmapProtocolError
from relay.socketmap.lookup import MapLookup
from relay.socketmap.metrics import SocketmapMetrics
from relay.socketmap.netstring import encode
from relay.socketmap.protocol import NOTFOUND, Dialect, parse_request, perm, temp

log = structlog.get_logger(__name__)

MAX_REMEMBERED = 100_000  # requests whose reply is kept, and domains whose last answer is logged


class SocketmapService:
    """Answers requests through `lookup`; counts them in `metrics` and logs a domain's answer
    the first time it is given (and when it changes), not per query."""

    def __init__(
        self,
        lookup: MapLookup,
        metrics: SocketmapMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup = lookup
        self.metrics = metrics or SocketmapMetrics()
        self.clock = clock
        self._last: dict[tuple[str, str], str] = {}
        # framed request -> (framed reply, kind, fresh until)
        self._memo: dict[bytes, tuple[bytes, str, float]] = {}
        self._memo_config: object = None

    def reply_now(self, request: bytes) -> bytes | None:
        """The framed reply to a request (a whole netstring, as `encode` frames it) answered
        recently with the same facts, else None. Counted in the lowest latency bucket: a
        dictionary probe takes well under 100 us."""
        found = self._memo.get(request)
        if found is None or found[2] <= self.clock():
            return None
        if self.lookup.config() is not self._memo_config:  # reloaded: overrides may differ
            return None
        self.metrics.observe_fast(found[1])
        return found[0]

    async def reply(self, payload: bytes) -> bytes:
        """The framed reply to one request payload (``PERM`` when it is not ``name key``)."""
        started = time.perf_counter()
        config = self.lookup.config()
        try:
            request = parse_request(payload)
        except SocketmapProtocolError as exc:
            # A whole netstring that is no `name key`: answered, the connection stays usable.
            found: MapAnswer = MapAnswer(perm(str(exc)), "malformed")
            self.metrics.observe(found.kind, time.perf_counter() - started)
            return encode(found.reply.encode())
        found, domain = await self._answer(request.name, request.key)
        framed = encode(found.reply.encode())
        if domain is not None and found.kind != "temp":
            if config is not self._memo_config or len(self._memo) >= MAX_REMEMBERED:
                self._memo.clear()
                self._memo_config = config
            fresh_until = self.lookup.fresh_until(domain)
            self._memo[encode(payload)] = (framed, found.kind, fresh_until)
        self.metrics.observe(found.kind, time.perf_counter() - started)
        return framed

    async def _answer(self, name: str, key: str) -> tuple[MapAnswer, str | None]:
        try:
            dialect = Dialect(name)
        except ValueError:
            names = ", ".join(d.value for d in Dialect)
            return MapAnswer(perm(f"unknown map name {name!r} (use {names})"), "unknown-map"), None
        domain = map_domain(key)
        if domain is None:
            return MapAnswer(NOTFOUND, "not-a-domain"), None
        try:
            facts = await self.lookup.facts(domain)
        except Exception as exc:  # a look-up bug must not end the connection: Postfix retries
            log.error("socketmap.lookup_error", domain=domain, error=repr(exc))
            return MapAnswer(temp("look-up failed"), "temp"), None
        found = answer(facts, dialect)
        self._log_first(domain, dialect, found)
        return found, domain

    def _log_first(self, domain: str, dialect: Dialect, found: MapAnswer) -> None:
        key = (domain, dialect.value)
        if self._last.get(key) == found.reply:
            return
        if len(self._last) >= MAX_REMEMBERED:
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
