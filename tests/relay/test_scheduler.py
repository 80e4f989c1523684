"""The queue manager's pure memory: due times, per-destination limits, dead destinations."""

from __future__ import annotations

from relay.queue.scheduler import Destinations, DueTimes, Job


def jobs(domain: str, n: int) -> list[Job]:
    return [Job(f"{domain}-{i}", domain, (f"u{i}@{domain}",)) for i in range(n)]


def test_due_times_pop_in_order_and_skip_what_was_moved_or_dropped() -> None:
    due = DueTimes()
    due.set("a", 30.0)
    due.set("b", 10.0)
    due.set("c", 20.0)
    due.set("a", 5.0)  # moved earlier: the old entry is skipped
    due.discard("c")
    assert due.next_time() == 5.0
    assert due.pop_due(15.0, limit=10) == ["a", "b"]
    assert due.pop_due(100.0, limit=10) == []
    assert len(due) == 0
    due.set("x", 50.0)
    assert due.all_now(1.0) == 1
    assert due.pop_due(1.0, limit=1) == ["x"]


def test_due_times_honour_the_limit() -> None:
    due = DueTimes()
    for i in range(5):
        due.set(f"m{i}", float(i))
    assert due.pop_due(10.0, limit=2) == ["m0", "m1"]
    assert len(due) == 3


def test_a_destination_never_takes_more_than_its_share() -> None:
    dests = Destinations(workers=3, per_destination=2)
    for job in jobs("slow.test", 10) + jobs("fast.test", 1):
        assert dests.admit(job, now=0.0)
    started = dests.start()
    # Two for the slow destination (its limit), the third worker goes to the other one.
    assert sorted(j.domain for j in started) == ["fast.test", "slow.test", "slow.test"]
    assert dests.start() == []  # every worker busy; the waiting jobs hold none
    fast = next(j for j in started if j.domain == "fast.test")
    dests.done(fast, reached=True, reason="", now=1.0, retry_initial=60, retry_max=3600)
    assert dests.start() == []  # a worker is free, but slow.test is at its own limit
    slow = next(j for j in started if j.domain == "slow.test")
    dests.done(slow, reached=True, reason="", now=2.0, retry_initial=60, retry_max=3600)
    (next_job,) = dests.start()
    assert next_job.domain == "slow.test"
    assert dests.running == 2


def test_an_unreachable_destination_dies_parks_and_comes_back_on_a_probe() -> None:
    dests = Destinations(workers=10, per_destination=2)
    pending = jobs("dead.test", 5)
    for job in pending:
        dests.admit(job, now=0.0)
    first, second = dests.start()
    suspended, revived = dests.done(
        first, reached=False, reason="refused", now=1.0, retry_initial=60, retry_max=3600
    )
    assert [j.queue_id for j in suspended] == [j.queue_id for j in pending[2:]]  # not tried
    assert revived is None
    # The other job that ran with it fails too: one cohort, still one failure.
    dests.done(second, reached=False, reason="refused", now=2.0, retry_initial=60, retry_max=3600)
    dest = dests.get("dead.test")
    assert dest is not None
    assert dest.failures == 1
    assert dest.dead_until == 61.0
    # While suspended, new jobs end at once and their messages park.
    assert not dests.admit(Job("new", "dead.test", ("x@dead.test",)), now=30.0)
    for job in pending:
        assert dests.park("dead.test", job.queue_id, release_at=1e9)
    assert dests.probes_due(30.0) == []
    (probe_id,) = dests.probes_due(61.0)  # one message finds out
    assert dests.admit(Job(probe_id, "dead.test", ("p@dead.test",)), now=61.0)
    assert not dests.admit(Job("other", "dead.test", ("o@dead.test",)), now=61.0)  # probe out
    (probe,) = dests.start()
    _, revived = dests.done(
        probe, reached=True, reason="", now=62.0, retry_initial=60, retry_max=3600
    )
    assert revived is not None
    assert sorted(revived.queue_ids) == sorted(
        j.queue_id for j in pending if j.queue_id != probe_id
    )
    assert not dest.dead


def test_a_failed_probe_doubles_the_suspension() -> None:
    dests = Destinations(workers=10, per_destination=1)
    (job,) = jobs("dead.test", 1)
    dests.admit(job, now=0.0)
    (running,) = dests.start()
    dests.done(running, reached=False, reason="refused", now=0.0, retry_initial=60, retry_max=900)
    assert dests.admit(job, now=60.0)  # the probe
    (running,) = dests.start()
    dests.done(running, reached=False, reason="refused", now=60.0, retry_initial=60, retry_max=900)
    dest = dests.get("dead.test")
    assert dest is not None
    assert dest.dead_until == 60.0 + 120


def test_parked_messages_leave_for_expiry_and_flush() -> None:
    dests = Destinations(workers=1, per_destination=1)
    (job,) = jobs("dead.test", 1)
    dests.admit(job, now=0.0)
    (running,) = dests.start()
    dests.done(running, reached=False, reason="refused", now=0.0, retry_initial=60, retry_max=60)
    dests.park("dead.test", "old", release_at=100.0)
    dests.park("dead.test", "young", release_at=500.0)
    assert dests.parked_due(200.0) == ["old"]
    assert dests.revive_all() == ["young"]
    assert dests.get("dead.test") is None  # alive and idle: forgotten


def test_an_internal_error_says_nothing_about_the_destination() -> None:
    dests = Destinations(workers=1, per_destination=1)
    (job,) = jobs("x.test", 1)
    dests.admit(job, now=0.0)
    (running,) = dests.start()
    suspended, revived = dests.done(
        running, reached=None, reason="bug", now=0.0, retry_initial=60, retry_max=60
    )
    assert (suspended, revived) == ([], None)
    assert dests.get("x.test") is None
