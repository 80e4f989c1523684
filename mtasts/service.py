"""`PolicyService`: the policy to apply for a recipient domain, with RFC 8461 cache semantics.

Every `get` looks up the live `_mta-sts` TXT record, then `mtasts.state.decide` says whether the
cached policy is used, a policy is fetched, a recent failure is waited out, or there is none.
Concurrent `get`s for one domain share one look-up and one fetch (single-flight).

A policy in mode ``none`` is returned as it is (source fresh or cached): the caller treats it as
no policy (RFC 8461 section 5), but keeps it for TLS-RPT's policy-string.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import replace

import dns.asyncresolver
import httpx
import structlog

from mtasts.cache import PolicyStore
from mtasts.errors import FETCH_ERROR, POLICY_INVALID, PolicyError, StsLookupError
from mtasts.fetch import fetch_policy, lookup_sts_record
from mtasts.model import Mode, PolicyFailure, PolicyResult, PolicySource, StsRecord
from mtasts.parse import policy_domain
from mtasts.state import (
    DEFAULT_REFRESH_INTERVAL,
    FETCH_BACKOFF,
    CacheEntry,
    FetchFailure,
    RefreshAction,
    TxtLookup,
    TxtStatus,
    decide,
    fallback,
)

log = structlog.get_logger(__name__)


class PolicyService:
    """The MTA-STS policy of recipient domains, cached in `store`, looked up through `resolver`.

    `hits` counts answers from the cache, `misses` every other answer (for metrics).
    """

    def __init__(
        self,
        store: PolicyStore,
        resolver: dns.asyncresolver.Resolver,
        ssl_context: ssl.SSLContext,
        *,
        https_port: int = 443,
        fetch_timeout: float = 60,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.time,
        client: httpx.AsyncClient | None = None,
        answer_ttl: float = 0.0,
    ) -> None:
        """`answer_ttl` > 0 reuses a domain's failure-free answer for that many seconds without
        asking DNS or the store again (a burst of mail to one domain then costs one look-up; a
        changed TXT id is seen that much later, as with any DNS cache)."""
        self.store = store
        self.resolver = resolver
        self.ssl_context = ssl_context
        self.https_port = https_port
        self.fetch_timeout = fetch_timeout
        self.refresh_interval = refresh_interval
        self.clock = clock
        self.client = client
        self.hits = 0
        self.misses = 0
        self._inflight: dict[str, asyncio.Future[PolicyResult]] = {}
        self.answer_ttl = answer_ttl
        self._recent: dict[str, tuple[PolicyResult, float]] = {}

    async def get(self, domain: str) -> PolicyResult:
        """The policy for mail to `domain` (STS-05..STS-08). Never raises a `PolicyError`."""
        name = policy_domain(domain)
        if name is None:
            # STS-08: an address literal or IP address has no policy; nor has a non-domain.
            self.misses += 1
            return PolicyResult(domain=domain, policy=None, source=PolicySource.NONE)
        if self.answer_ttl > 0:
            recent = self._recent.get(name)
            if recent is not None and recent[1] > self.clock():
                self.hits += 1
                return recent[0]
        result = await self._single_flight(name)
        if result.source is PolicySource.CACHED:
            self.hits += 1
        else:
            self.misses += 1
        if self.answer_ttl > 0 and result.failure is None:
            self._remember(name, result)
        return result

    def _remember(self, name: str, result: PolicyResult) -> None:
        """Keep `result` for `answer_ttl` seconds; as a repeat it is an answer from the cache."""
        now = self.clock()
        if len(self._recent) >= 4096:
            self._recent = {k: v for k, v in self._recent.items() if v[1] > now}
        if result.source is PolicySource.FRESH:
            result = replace(result, source=PolicySource.CACHED)
        self._recent[name] = (result, now + self.answer_ttl)

    async def check_record_changed(self, domain: str) -> bool:
        """STS-12: before failing a message for good, look at the TXT id again.

        True when a policy under a different id than the cached one was fetched (the caller then
        retries with the new policy from `get`).
        """
        name = policy_domain(domain)
        if name is None:
            return False
        before = await asyncio.to_thread(self.store.get, name)
        self._recent.pop(name, None)
        result = await self._single_flight(name)
        if result.source is not PolicySource.FRESH or result.record is None:
            return False
        return before is None or before.record_id != result.record.id

    def _store_fresh(self, entry: CacheEntry) -> None:
        """Cache a fetched policy and forget the domain's fetch failures (in a worker thread)."""
        self.store.put(entry)
        self.store.clear_failures(entry.domain)

    async def _single_flight(self, name: str) -> PolicyResult:
        """Run `_resolve(name)` once for all concurrent callers."""
        while (shared := self._inflight.get(name)) is not None:
            try:
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # The caller doing the work was cancelled: do it ourselves.
        future: asyncio.Future[PolicyResult] = asyncio.get_running_loop().create_future()
        self._inflight[name] = future
        try:
            result = await self._resolve(name)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; waiters still get it
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[name]

    async def _lookup(self, name: str) -> TxtLookup:
        try:
            record = await lookup_sts_record(name, self.resolver)
        except StsLookupError as exc:
            return TxtLookup(TxtStatus.FAILED, error=exc.message)
        except PolicyError as exc:
            return TxtLookup(TxtStatus.INVALID, error=exc.message)
        return TxtLookup.found(record) if record else TxtLookup(TxtStatus.ABSENT)

    async def _resolve(self, name: str) -> PolicyResult:
        now = self.clock()
        # The store is SQLite (or a shared one): its calls run in a worker thread, never on the
        # event loop that carries every SMTP session.
        entry = await asyncio.to_thread(self.store.get, name)
        txt = await self._lookup(name)
        last = (
            await asyncio.to_thread(self.store.last_failure, name, txt.record.id)
            if txt.record
            else None
        )
        action = decide(entry, txt, now, last_failure=last, refresh_interval=self.refresh_interval)
        bound = log.bind(domain=name, action=str(action))
        txt_failure = None
        if txt.status is TxtStatus.FAILED:
            txt_failure = PolicyFailure(FETCH_ERROR, txt.error)
        elif txt.status is TxtStatus.INVALID:
            txt_failure = PolicyFailure(POLICY_INVALID, txt.error)
        if txt_failure is not None:
            bound.warning(
                "mtasts.txt_unusable", error=txt_failure.message, cached=entry is not None
            )
        if action is RefreshAction.USE_CACHE and entry is not None:
            return _answer(name, entry, PolicySource.CACHED, txt.record, txt_failure)
        if action is RefreshAction.NO_POLICY or txt.record is None:
            return PolicyResult(name, None, PolicySource.NONE, failure=txt_failure)
        if action is RefreshAction.BACKOFF and last is not None:
            failure = PolicyFailure(
                last.result_type,
                f"{last.message} (not fetching again for {FETCH_BACKOFF // 60} minutes)",
            )
            bound.info("mtasts.fetch_backoff", record_id=txt.record.id, error=last.message)
            return _answer(name, fallback(entry, now), PolicySource.CACHED, txt.record, failure)
        try:
            policy = await fetch_policy(
                name,
                resolver=self.resolver,
                ssl_context=self.ssl_context,
                port=self.https_port,
                timeout=self.fetch_timeout,
                client=self.client,
            )
        except PolicyError as exc:
            failed_at = self.clock()
            await asyncio.to_thread(
                self.store.record_failure,
                name,
                FetchFailure(txt.record.id, failed_at, exc.result_type, exc.message),
            )
            kept = fallback(entry, failed_at)
            # STS-07 / RPT-06: a failed refresh of a non-none policy is logged and reported.
            level = bound.warning if kept and kept.policy.mode is not Mode.NONE else bound.info
            level(
                "mtasts.fetch_failed",
                record_id=txt.record.id,
                result_type=exc.result_type,
                error=exc.message,
                cached=kept is not None,
            )
            failure = PolicyFailure(exc.result_type, exc.message)
            return _answer(name, kept, PolicySource.CACHED, txt.record, failure)
        fresh = CacheEntry.fetched(name, policy, txt.record.id, self.clock())
        await asyncio.to_thread(self._store_fresh, fresh)
        bound.info(
            "mtasts.policy_fetched",
            record_id=txt.record.id,
            mode=str(policy.mode),
            max_age=policy.max_age,
            mx=list(policy.mx),
        )
        return _answer(name, fresh, PolicySource.FRESH, txt.record, None)


def _answer(
    name: str,
    entry: CacheEntry | None,
    source: PolicySource,
    record: StsRecord | None,
    failure: PolicyFailure | None,
) -> PolicyResult:
    """A result from `entry`; without an entry the domain has no policy (STS-06)."""
    if entry is None:
        return PolicyResult(name, None, PolicySource.NONE, record=record, failure=failure)
    return PolicyResult(
        name,
        entry.policy,
        source,
        record=record,
        failure=failure,
        fetched_at=entry.fetched_at,
        expires_at=entry.expires_at,
    )
