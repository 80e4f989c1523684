"""The refresh and fallback decision of the policy cache (RFC 8461 sections 3.3, 10.2): pure.

Given the cached entry, the live TXT look-up, the last failed fetch for the live id and `now`,
`decide` says what `PolicyService` does next. The table:

| live TXT            | cached, unexpired         | refresh due / id changed | action              |
|---------------------|---------------------------|--------------------------|---------------------|
| found               | yes, same id              | no                       | USE_CACHE           |
| found               | any                       | yes (or nothing cached)  | FETCH, or BACKOFF   |
|                     |                           |                          | if that id failed   |
|                     |                           |                          | < 5 minutes ago     |
| absent / invalid /  | yes                       | -                        | USE_CACHE (STS-06)  |
| look-up failed      | no                        | -                        | NO_POLICY           |

After FETCH fails, or on BACKOFF, an unexpired cached policy still applies (`fallback`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mtasts.model import Policy, StsRecord

FETCH_BACKOFF = 300  # 3.3: wait at least 5 minutes after a failed fetch before trying that id again
EXPIRY_MARGIN = 3600  # refresh this long before expiry (at most half of max_age)
DEFAULT_REFRESH_INTERVAL = 86_400  # 10.2: refresh about daily even if the id is unchanged


class RefreshAction(StrEnum):
    """What the policy cache does next for a domain (not `relay.decision.Action`)."""

    USE_CACHE = "use-cache"
    FETCH = "fetch"
    BACKOFF = "backoff"
    NO_POLICY = "no-policy"


class TxtStatus(StrEnum):
    FOUND = "found"
    ABSENT = "absent"  # NXDOMAIN, no TXT, or not exactly one v=STSv1 record
    INVALID = "invalid"  # exactly one v=STSv1 record, and it does not parse
    FAILED = "failed"  # SERVFAIL, timeout: we do not know


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached policy of one domain, with the TXT id it was fetched under."""

    domain: str
    policy: Policy
    record_id: str
    fetched_at: float
    expires_at: float

    @classmethod
    def fetched(cls, domain: str, policy: Policy, record_id: str, now: float) -> CacheEntry:
        return cls(domain, policy, record_id, now, now + policy.max_age)

    def valid_at(self, now: float) -> bool:
        return now < self.expires_at

    def refresh_due(self, now: float, refresh_interval: float) -> bool:
        """True once the proactive refresh interval passed or expiry is near (STS-07)."""
        margin = min(EXPIRY_MARGIN, self.policy.max_age / 2)
        return now >= self.fetched_at + refresh_interval or now >= self.expires_at - margin


@dataclass(frozen=True, slots=True)
class TxtLookup:
    """The outcome of the live `_mta-sts` TXT look-up."""

    status: TxtStatus
    record: StsRecord | None = None
    error: str = ""

    @classmethod
    def found(cls, record: StsRecord) -> TxtLookup:
        return cls(TxtStatus.FOUND, record)


@dataclass(frozen=True, slots=True)
class FetchFailure:
    """The last failed fetch of one domain under one TXT id."""

    record_id: str
    failed_at: float
    result_type: str
    message: str


def decide(
    entry: CacheEntry | None,
    txt: TxtLookup,
    now: float,
    *,
    last_failure: FetchFailure | None = None,
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
) -> RefreshAction:
    """What to do for one `get`: see the module table."""
    cached = entry is not None and entry.valid_at(now)
    if txt.status is not TxtStatus.FOUND or txt.record is None:
        return RefreshAction.USE_CACHE if cached else RefreshAction.NO_POLICY
    if (
        entry is not None
        and cached
        and entry.record_id == txt.record.id
        and not entry.refresh_due(now, refresh_interval)
    ):
        return RefreshAction.USE_CACHE
    if in_backoff(last_failure, txt.record.id, now):
        return RefreshAction.BACKOFF
    return RefreshAction.FETCH


def in_backoff(failure: FetchFailure | None, record_id: str, now: float) -> bool:
    """True while a fetch under this TXT id failed less than 5 minutes ago (STS-05)."""
    return (
        failure is not None
        and failure.record_id == record_id
        and failure.failed_at <= now < failure.failed_at + FETCH_BACKOFF
    )


def fallback(entry: CacheEntry | None, now: float) -> CacheEntry | None:
    """The cached entry that still applies when no live policy could be had (STS-06)."""
    return entry if entry is not None and entry.valid_at(now) else None
