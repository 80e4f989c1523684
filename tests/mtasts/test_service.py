"""PolicyService against the lab DNS and policy host, with an injected clock (STS-05..08, 12)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from lab.policy_host import Failure
from mtasts.cache import MemoryPolicyStore, PolicyStore
from mtasts.errors import FETCH_ERROR, POLICY_INVALID, WEBPKI_INVALID
from mtasts.model import Mode, PolicySource
from mtasts.service import PolicyService
from relay.state.database import SqliteDatabase
from relay.state.policy_store import SqlPolicyStore
from tests.mtasts.conftest import Lab

DAY = 86_400.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def service(lab: Lab, clock: Clock, store: PolicyStore | None = None, **kw: float) -> PolicyService:
    return PolicyService(
        store or MemoryPolicyStore(),
        lab.resolver,
        lab.ssl_context,
        https_port=lab.host.port,
        fetch_timeout=kw.pop("fetch_timeout", 5.0),
        clock=clock,
        **kw,
    )


async def test_sts06_cold_fetch_then_cache(lab: Lab) -> None:
    lab.publish("example.org", "a1")
    clock = Clock()
    svc = service(lab, clock)
    first = await svc.get("Example.org.")
    assert first.domain == "example.org"
    assert first.source is PolicySource.FRESH
    assert first.policy is not None
    assert first.policy.mode is Mode.ENFORCE
    assert first.record is not None
    assert first.record.id == "a1"
    assert first.failure is None
    assert first.expires_at == clock.now + 86400
    clock.now += 3600
    second = await svc.get("example.org")
    assert second.source is PolicySource.CACHED
    assert second.policy == first.policy
    assert lab.host.requests["example.org"] == 1
    assert lab.dns.count("_mta-sts.example.org", "TXT") == 2  # the id is checked every time
    assert (svc.hits, svc.misses) == (1, 1)


async def test_sts06_id_change_fetches_new_policy(lab: Lab) -> None:
    lab.publish("example.org", "1")
    clock = Clock()
    svc = service(lab, clock)
    await svc.get("example.org")
    new_text = "version: STSv1\nmode: testing\nmx: new.example.org\nmax_age: 3600\n"
    lab.publish("example.org", "2", new_text)
    clock.now += 60
    result = await svc.get("example.org")
    assert result.source is PolicySource.FRESH
    assert result.policy is not None
    assert result.policy.mx == ("new.example.org",)
    assert lab.host.requests["example.org"] == 2


async def test_sts06_expired_cache_is_refetched_or_dropped(lab: Lab) -> None:
    text = "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 600\n"
    lab.publish("example.org", "1", text)
    clock = Clock()
    svc = service(lab, clock)
    await svc.get("example.org")
    clock.now += 601
    assert (await svc.get("example.org")).source is PolicySource.FRESH
    lab.dns.remove("_mta-sts.example.org")
    clock.now += 300
    assert (await svc.get("example.org")).source is PolicySource.CACHED  # no TXT, still valid
    clock.now += 301
    gone = await svc.get("example.org")
    assert gone.source is PolicySource.NONE
    assert gone.policy is None
    assert gone.failure is None


async def test_sts06_valid_txt_fetch_fails_nothing_cached(lab: Lab) -> None:
    lab.publish("example.org")
    lab.host.set_failure("example.org", Failure.EXPIRED_CERT)
    result = await service(lab, Clock()).get("example.org")
    assert result.policy is None
    assert result.source is PolicySource.NONE
    assert result.record is not None
    assert result.failure is not None
    assert result.failure.result_type == WEBPKI_INVALID


async def test_sts06_stale_on_dns_servfail(lab: Lab) -> None:
    lab.publish("example.org")
    clock = Clock()
    svc = service(lab, clock)
    await svc.get("example.org")
    lab.dns.servfail("_mta-sts.example.org")
    clock.now += 2 * 3600
    result = await svc.get("example.org")
    assert result.source is PolicySource.CACHED
    assert result.policy is not None
    assert result.policy.mode is Mode.ENFORCE
    assert result.failure is not None
    assert result.failure.result_type == FETCH_ERROR
    assert lab.host.requests["example.org"] == 1


async def test_sts07_stale_on_https_down_reports_failure(lab: Lab) -> None:
    lab.publish("example.org")
    clock = Clock()
    svc = service(lab, clock)
    await svc.get("example.org")
    lab.host.set_failure("example.org", Failure.STATUS_500)
    clock.now += DAY - 1800  # refresh is due: expiry is near
    with capture_logs() as logs:
        result = await svc.get("example.org")
    assert result.source is PolicySource.CACHED
    assert result.policy is not None
    assert result.policy.mode is Mode.ENFORCE
    assert result.failure is not None
    assert "HTTP status 500" in result.failure.message
    warning = [e for e in logs if e["event"] == "mtasts.fetch_failed"]
    assert warning
    assert warning[0]["log_level"] == "warning"
    assert warning[0]["domain"] == "example.org"
    assert lab.host.requests["example.org"] == 2


async def test_sts05_five_minute_backoff_after_failed_fetch(lab: Lab) -> None:
    lab.publish("example.org")
    lab.host.set_failure("example.org", Failure.STATUS_404)
    clock = Clock()
    svc = service(lab, clock)
    assert (await svc.get("example.org")).failure is not None
    clock.now += 299
    waiting = await svc.get("example.org")
    assert waiting.policy is None
    assert waiting.failure is not None
    assert "5 minutes" in waiting.failure.message
    assert lab.host.requests["example.org"] == 1
    lab.publish("example.org", "2")  # a new id is not held back by the old id's failure
    assert (await svc.get("example.org")).source is PolicySource.FRESH
    assert lab.host.requests["example.org"] == 2


async def test_sts05_backoff_ends_after_five_minutes(lab: Lab) -> None:
    lab.publish("example.org")
    lab.host.set_failure("example.org", Failure.HTML)
    clock = Clock()
    svc = service(lab, clock)
    await svc.get("example.org")
    lab.host.set_failure("example.org", None)
    clock.now += 300
    assert (await svc.get("example.org")).source is PolicySource.FRESH
    assert lab.host.requests["example.org"] == 2


async def test_sts07_proactive_refresh_with_unchanged_id(lab: Lab) -> None:
    text = "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 604800\n"
    lab.publish("example.org", "1", text)
    clock = Clock()
    svc = service(lab, clock, refresh_interval=DAY)
    await svc.get("example.org")
    clock.now += DAY - 1
    assert (await svc.get("example.org")).source is PolicySource.CACHED
    clock.now += 1
    refreshed = await svc.get("example.org")
    assert refreshed.source is PolicySource.FRESH
    assert refreshed.fetched_at == clock.now
    assert lab.host.requests["example.org"] == 2


async def test_restart_survival_with_sqlite(lab: Lab, tmp_path: Path) -> None:
    lab.publish("example.org")
    clock = Clock()
    path = tmp_path / "state.sqlite3"
    store = SqlPolicyStore(SqliteDatabase(path))
    await service(lab, clock, store).get("example.org")
    store.close()
    clock.now += 600
    lab.host.set_failure("example.org", Failure.DOWN)
    again = SqlPolicyStore(SqliteDatabase(path))
    result = await service(lab, clock, again).get("example.org")
    assert result.source is PolicySource.CACHED
    assert result.policy is not None
    assert result.policy.mx[0] == "mx.example.org"
    assert lab.host.requests["example.org"] == 1
    again.close()


async def test_single_flight_200_concurrent_gets(lab: Lab) -> None:
    lab.publish("example.org")
    svc = service(lab, Clock())
    results = await asyncio.gather(*(svc.get("example.org") for _ in range(200)))
    assert {r.source for r in results} == {PolicySource.FRESH}
    assert lab.dns.count("_mta-sts.example.org", "TXT") == 1
    assert lab.host.requests["example.org"] == 1
    assert svc.misses == 200


async def test_single_flight_survives_a_cancelled_leader(lab: Lab) -> None:
    lab.publish("example.org")
    lab.host.set_failure("example.org", Failure.STALL)
    svc = service(lab, Clock())
    leader = asyncio.create_task(svc.get("example.org"))
    for _ in range(200):
        if lab.host.requests["example.org"]:
            break
        await asyncio.sleep(0.01)
    follower = asyncio.create_task(svc.get("example.org"))
    await asyncio.sleep(0)
    lab.host.set_failure("example.org", None)
    leader.cancel()
    result = await follower
    assert result.source is PolicySource.FRESH
    assert leader.cancelled()


async def test_sts08_address_literal_and_parent_domain(lab: Lab) -> None:
    lab.publish("example.org")
    svc = service(lab, Clock())
    for literal in ("[127.0.0.1]", "127.0.0.1", "[IPv6:::1]"):
        result = await svc.get(literal)
        assert result.policy is None
        assert result.source is PolicySource.NONE
    assert sum(lab.dns.queries.values()) == 0
    sub = await svc.get("sub.example.org")
    assert sub.policy is None
    assert sub.source is PolicySource.NONE
    assert lab.dns.count("_mta-sts.sub.example.org", "TXT") == 1
    assert lab.dns.count("_mta-sts.example.org", "TXT") == 0
    assert lab.host.requests["example.org"] == 0


async def test_sts02_invalid_record_means_no_policy_but_keeps_cache(lab: Lab) -> None:
    lab.dns.add("_mta-sts.bad.example", "TXT", "v=STSv1; id=not-valid")
    svc = service(lab, Clock())
    bad = await svc.get("bad.example")
    assert bad.policy is None
    assert bad.failure is not None
    assert bad.failure.result_type == POLICY_INVALID
    lab.publish("example.org")
    await svc.get("example.org")
    lab.dns.set("_mta-sts.example.org", "TXT", ["v=STSv1; id=1", "v=STSv1; id=2"])
    kept = await svc.get("example.org")
    assert kept.source is PolicySource.CACHED
    assert kept.policy is not None


async def test_mode_none_policy_is_returned_as_policy(lab: Lab) -> None:
    lab.publish("example.org", text="version: STSv1\nmode: none\nmax_age: 86400\n")
    result = await service(lab, Clock()).get("example.org")
    assert result.source is PolicySource.FRESH
    assert result.policy is not None
    assert result.policy.mode is Mode.NONE


async def test_sts12_check_record_changed(lab: Lab) -> None:
    lab.publish("example.org", "1")
    clock = Clock()
    svc = service(lab, clock)
    await svc.get("example.org")
    assert not await svc.check_record_changed("example.org")
    lab.publish(
        "example.org", "2", "version: STSv1\nmode: enforce\nmx: b.example.org\nmax_age: 9\n"
    )
    assert await svc.check_record_changed("example.org")
    result = await svc.get("example.org")
    assert result.policy is not None
    assert result.policy.mx == ("b.example.org",)
    assert not await svc.check_record_changed("[127.0.0.1]")


@pytest.mark.parametrize("failure", [Failure.STALL])
async def test_sts04_service_fetch_timeout(lab: Lab, failure: Failure) -> None:
    lab.publish("example.org")
    lab.host.set_failure("example.org", failure)
    result = await service(lab, Clock(), fetch_timeout=0.3).get("example.org")
    assert result.policy is None
    assert result.failure is not None
    assert result.failure.result_type == FETCH_ERROR


async def test_answer_ttl_reuses_a_good_answer_then_looks_again(lab: Lab) -> None:
    lab.publish("example.org", "1")
    clock = Clock()
    svc = service(lab, clock, answer_ttl=5.0)
    first = await svc.get("example.org")
    assert first.source is PolicySource.FRESH
    for _ in range(50):
        again = await svc.get("example.org")
        assert again.source is PolicySource.CACHED
        assert again.policy == first.policy
    assert lab.dns.count("_mta-sts.example.org", "TXT") == 1
    lab.publish(
        "example.org", "2", "version: STSv1\nmode: testing\nmx: b.example.org\nmax_age: 60\n"
    )
    clock.now += 6  # past answer_ttl: the new id is seen and the new policy fetched
    changed = await svc.get("example.org")
    assert changed.source is PolicySource.FRESH
    assert changed.policy is not None
    assert changed.policy.mx == ("b.example.org",)
    assert (svc.hits, svc.misses) == (50, 2)


async def test_answer_ttl_never_reuses_an_answer_with_a_failure(lab: Lab) -> None:
    lab.publish("example.org", "1")
    lab.host.set_failure("example.org", Failure.STATUS_500)
    clock = Clock()
    svc = service(lab, clock, answer_ttl=5.0)
    first = await svc.get("example.org")
    assert first.failure is not None
    second = await svc.get("example.org")
    assert second.failure is not None  # reported again: every session counts it (RPT-06)
    assert lab.dns.count("_mta-sts.example.org", "TXT") == 2


async def test_sts12_record_check_bypasses_answer_ttl(lab: Lab) -> None:
    lab.publish("example.org", "1")
    clock = Clock()
    svc = service(lab, clock, answer_ttl=60.0)
    await svc.get("example.org")
    lab.publish("example.org", "2")
    assert await svc.check_record_changed("example.org") is True
    result = await svc.get("example.org")
    assert result.record is not None
    assert result.record.id == "2"


class ThreadNotingStore(MemoryPolicyStore):
    """A policy store that notes the thread of every call: never the event loop's."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []
        for name in ("get", "put", "record_failure", "last_failure", "clear_failures"):
            method = getattr(super(), name)
            setattr(self, name, self._noting(method))

    def _noting(self, method: Any) -> Any:
        def call(*args: Any) -> Any:
            self.threads.append(threading.current_thread().name)
            return method(*args)

        return call


async def test_store_is_never_called_on_the_event_loop(lab: Lab) -> None:
    lab.publish("example.org")
    clock = Clock()
    store = ThreadNotingStore()
    svc = service(lab, clock, store)
    await svc.get("example.org")  # get, put, clear_failures
    lab.host.set_failure("example.org", Failure.STATUS_500)
    clock.now += DAY - 1800
    await svc.get("example.org")  # get, last_failure, record_failure
    await svc.check_record_changed("example.org")
    assert len(store.threads) >= 6
    assert threading.current_thread().name not in store.threads
