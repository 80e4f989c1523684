"""The queue manager's memory: when each waiting message is due, and per destination (recipient
domain) which deliveries wait, which run and whether the destination is dead. Pure: no I/O, no
clock (`now` is passed in), so every rule here has a table test.

Postfix's qmgr is the model. A message waits in `DueTimes` until its next attempt; then one
*pass* delivers it to each of its pending domains at once, a `Job` per domain, each queued at
its `Destination`. At most `workers` jobs run in all and at most `per_destination` per
destination; a job waiting for its destination holds nothing global, so a slow destination
fills only its own slots. A destination that could not be reached at all is *dead*: it is
suspended with back-off, jobs for it end at once without a connection ("suspended"), their
messages are parked on it; when the suspension ends one parked message is let through as a probe,
and any attempt that reaches an SMTP server revives the destination and releases what was parked.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.queue.retry import next_retry


@dataclass(frozen=True, slots=True)
class Job:
    """One pass's delivery of one message to the recipients of one domain."""

    queue_id: str
    domain: str
    rcpts: tuple[str, ...]


class DueTimes:
    """Next-attempt times of the waiting messages: a heap with lazy deletion.

    Per message about 200 bytes: a dict entry and a heap tuple (float, id) sharing the id string.
    Re-timing a message leaves its old heap entry behind; entries that no longer match the dict
    are skipped when popped, and the heap is rebuilt when they outnumber the live ones.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, queue_id: str) -> bool:
        return queue_id in self._due

    def set(self, queue_id: str, when: float) -> None:
        """Due at `when` (replacing any earlier time)."""
        if self._due.get(queue_id) == when:
            return
        self._due[queue_id] = when
        heapq.heappush(self._heap, (when, queue_id))
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._heap = [(t, q) for q, t in self._due.items()]
            heapq.heapify(self._heap)

    def discard(self, queue_id: str) -> None:
        self._due.pop(queue_id, None)

    def pop_due(self, now: float, limit: int) -> list[str]:
        """Up to `limit` messages due at or before `now`, earliest first; they leave."""
        out: list[str] = []
        while self._heap and len(out) < limit and self._heap[0][0] <= now:
            when, queue_id = heapq.heappop(self._heap)
            if self._due.get(queue_id) == when:
                del self._due[queue_id]
                out.append(queue_id)
        return out

    def next_time(self) -> float | None:
        """When the earliest waiting message is due; None when none waits."""
        while self._heap:
            when, queue_id = self._heap[0]
            if self._due.get(queue_id) == when:
                return when
            heapq.heappop(self._heap)
        return None

    def all_now(self, now: float) -> int:
        """Make every waiting message due now (`stsguard queue flush`); returns how many."""
        for queue_id in list(self._due):
            self.set(queue_id, now)
        return len(self._due)


@dataclass(slots=True)
class Destination:
    """One recipient domain: its waiting jobs, how many run, whether it is dead."""

    name: str
    waiting: deque[Job] = field(default_factory=deque)
    running: int = 0
    in_ready: bool = False
    failures: int = 0  # consecutive attempts that reached no server
    dead_until: float | None = None  # suspended until then; None: alive
    probing: bool = False  # a probe job is out
    reason: str = ""  # why it is dead (the last failure)
    parked: dict[str, float] = field(default_factory=dict)  # message -> release time

    @property
    def dead(self) -> bool:
        return self.dead_until is not None

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.running or self.dead or self.parked)


@dataclass(frozen=True, slots=True)
class Revived:
    """A destination came back: its parked messages are due again."""

    domain: str
    queue_ids: tuple[str, ...]


class Destinations:
    """Per-destination queues under one global limit on running jobs."""

    def __init__(self, *, workers: int, per_destination: int) -> None:
        self.workers = workers
        self.per_destination = per_destination
        self.running = 0
        self._by_name: dict[str, Destination] = {}
        self._ready: deque[Destination] = deque()

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, domain: str) -> Destination | None:
        return self._by_name.get(domain)

    def dead(self) -> list[Destination]:
        return [d for d in self._by_name.values() if d.dead]

    def _dest(self, domain: str) -> Destination:
        dest = self._by_name.get(domain)
        if dest is None:
            dest = self._by_name[domain] = Destination(domain)
        return dest

    def _forget_if_idle(self, dest: Destination) -> None:
        if dest.idle and not dest.in_ready:
            self._by_name.pop(dest.name, None)

    def admit(self, job: Job, now: float) -> bool:
        """Queue `job` at its destination; False when the destination is dead and this job is
        not its probe (the job ends at once, "suspended")."""
        dest = self._dest(job.domain)
        if dest.dead:
            assert dest.dead_until is not None
            if dest.probing or now < dest.dead_until:
                return False
            dest.probing = True  # the suspension is over: this job finds out
        dest.waiting.append(job)
        self._make_ready(dest)
        return True

    def _make_ready(self, dest: Destination) -> None:
        if not dest.in_ready and dest.waiting and dest.running < self.per_destination:
            dest.in_ready = True
            self._ready.append(dest)

    def start(self) -> list[Job]:
        """The jobs to start now: round robin over destinations with a free slot."""
        started: list[Job] = []
        while self.running < self.workers and self._ready:
            dest = self._ready.popleft()
            dest.in_ready = False
            if not dest.waiting or dest.running >= self.per_destination:
                continue
            started.append(dest.waiting.popleft())
            dest.running += 1
            self.running += 1
            self._make_ready(dest)
        return started

    def done(
        self,
        job: Job,
        *,
        reached: bool | None,
        reason: str,
        now: float,
        retry_initial: int,
        retry_max: int,
    ) -> tuple[list[Job], Revived | None]:
        """A started job ended. `reached`: True when some SMTP server answered (the destination
        is alive), False when none could be reached, None when the job says nothing about it
        (it failed inside the relay).

        Returns the jobs that were waiting at a destination that just died (they end as
        "suspended" without being tried) and, when a dead destination came back, what it had
        parked."""
        dest = self._dest(job.domain)
        dest.running -= 1
        self.running -= 1
        suspended: list[Job] = []
        revived: Revived | None = None
        if reached:
            if dest.dead:
                revived = Revived(dest.name, tuple(dest.parked))
                dest.parked.clear()
            dest.failures, dest.dead_until, dest.probing, dest.reason = 0, None, False, ""
        elif reached is False:
            # Jobs that ran together and failed together count once, as Postfix's cohort.
            if dest.dead_until is None or now >= dest.dead_until:
                dest.failures += 1
                delay = next_retry(dest.failures, initial=retry_initial, maximum=retry_max)
                dest.dead_until = now + delay
            dest.probing = False
            dest.reason = reason
            suspended = list(dest.waiting)
            dest.waiting.clear()
        elif dest.probing:
            dest.probing = False  # the probe told nothing: the next job probes
        self._make_ready(dest)
        self._forget_if_idle(dest)
        return suspended, revived

    def drop_waiting(self) -> list[Job]:
        """Every job not started yet, taken out (the relay is stopping)."""
        jobs: list[Job] = []
        for dest in list(self._by_name.values()):
            jobs.extend(dest.waiting)
            dest.waiting.clear()
            if dest.probing:
                dest.probing = False
            dest.in_ready = False
            self._forget_if_idle(dest)
        self._ready.clear()
        return jobs

    def park(self, domain: str, queue_id: str, release_at: float) -> bool:
        """Park a message on a dead destination until it comes back, or until `release_at`
        (its expiry or delay warning) at the latest; False when the destination is alive."""
        dest = self._by_name.get(domain)
        if dest is None or not dest.dead:
            return False
        dest.parked[queue_id] = release_at
        return True

    def unpark(self, queue_ids: Iterable[str]) -> None:
        """Take messages off every destination they are parked on (deleted, held)."""
        wanted = set(queue_ids)
        for dest in list(self._by_name.values()):
            for queue_id in wanted & dest.parked.keys():
                del dest.parked[queue_id]
            self._forget_if_idle(dest)

    def probes_due(self, now: float) -> list[str]:
        """For each dead destination whose suspension is over and that has no probe out, one
        parked message to try (the oldest)."""
        probes: list[str] = []
        for dest in self._by_name.values():
            suspended = dest.dead_until is not None and now < dest.dead_until
            if dest.dead and not suspended and not dest.probing and dest.parked:
                queue_id = min(dest.parked, key=dest.parked.__getitem__)
                del dest.parked[queue_id]
                probes.append(queue_id)
        return probes

    def parked_due(self, now: float) -> list[str]:
        """Parked messages whose release time (`park`'s `release_at`: expiry or a delay
        warning) has come; they are taken off, their next pass decides."""
        found: list[str] = []
        for dest in self._by_name.values():
            due = [q for q, release_at in dest.parked.items() if release_at <= now]
            for queue_id in due:
                del dest.parked[queue_id]
            found.extend(due)
        return found

    def next_wake(self) -> float | None:
        """When the earliest suspension that has parked messages ends."""
        times = [
            d.dead_until
            for d in self._by_name.values()
            if d.dead_until is not None and d.parked and not d.probing
        ]
        return min(times) if times else None

    def revive_all(self) -> list[str]:
        """`stsguard queue flush`: every dead destination alive again; their parked messages."""
        released: list[str] = []
        for name in list(self._by_name):
            released.extend(self.revive(name))
        return released

    def revive(self, domain: str) -> list[str]:
        """`stsguard queue flush --domain D`: that destination alive again; its parked messages."""
        dest = self._by_name.get(domain)
        if dest is None:
            return []
        released = list(dest.parked)
        dest.parked.clear()
        dest.failures, dest.dead_until, dest.probing, dest.reason = 0, None, False, ""
        self._forget_if_idle(dest)
        return released

    def parked_count(self) -> int:
        return sum(len(d.parked) for d in self._by_name.values())
