"""Where fetched policies and failed fetches are kept: the `PolicyStore` Protocol and a memory
implementation for tests.

The relay's implementation is SQL (`relay.state.policy_store.SqlPolicyStore`: SQLite, or
PostgreSQL shared by a fleet), so a restarted relay finds its policies again (RFC 8461 section 3.3
wants them kept until expiry). Implementations raise `mtasts.errors.PolicyStoreError`.
"""

from __future__ import annotations

from typing import Protocol

from mtasts.state import CacheEntry, FetchFailure


class PolicyStore(Protocol):
    """Cached policies per domain, plus the last failed fetch per domain and TXT id (STS-05)."""

    def get(self, domain: str) -> CacheEntry | None: ...

    def put(self, entry: CacheEntry) -> None: ...

    def delete(self, domain: str) -> None: ...

    def list(self) -> list[CacheEntry]: ...

    def record_failure(self, domain: str, failure: FetchFailure) -> None: ...

    def last_failure(self, domain: str, record_id: str) -> FetchFailure | None: ...

    def clear_failures(self, domain: str) -> None: ...


class MemoryPolicyStore:
    """A `PolicyStore` in dictionaries."""

    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}
        self._failures: dict[tuple[str, str], FetchFailure] = {}

    def get(self, domain: str) -> CacheEntry | None:
        return self._entries.get(domain)

    def put(self, entry: CacheEntry) -> None:
        self._entries[entry.domain] = entry

    def delete(self, domain: str) -> None:
        self._entries.pop(domain, None)
        self.clear_failures(domain)

    def list(self) -> list[CacheEntry]:
        return sorted(self._entries.values(), key=lambda e: e.domain)

    def record_failure(self, domain: str, failure: FetchFailure) -> None:
        self._failures[(domain, failure.record_id)] = failure

    def last_failure(self, domain: str, record_id: str) -> FetchFailure | None:
        return self._failures.get((domain, record_id))

    def clear_failures(self, domain: str) -> None:
        for key in [k for k in self._failures if k[0] == domain]:
            del self._failures[key]
