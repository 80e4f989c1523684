"""The policy stores: memory and SQLite behave alike; SQLite survives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtasts.cache import MemoryPolicyStore, PolicyStore, SqlitePolicyStore
from mtasts.errors import PolicyStoreError
from mtasts.model import Mode, Policy
from mtasts.state import CacheEntry, FetchFailure

TEXT = "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 86400\n"
POLICY = Policy(Mode.ENFORCE, 86400, ("mx.example.org",), TEXT)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> PolicyStore:
    if request.param == "memory":
        return MemoryPolicyStore()
    return SqlitePolicyStore(tmp_path / "state.sqlite3")


def test_store_put_get_list_delete(store: PolicyStore) -> None:
    assert store.get("example.org") is None
    entry = CacheEntry.fetched("example.org", POLICY, "1", 100.0)
    other = CacheEntry.fetched("a.example", Policy(Mode.NONE, 60, ()), "x", 5.0)
    store.put(entry)
    store.put(other)
    assert store.get("example.org") == entry
    assert [e.domain for e in store.list()] == ["a.example", "example.org"]
    newer = CacheEntry.fetched("example.org", POLICY, "2", 200.0)
    store.put(newer)
    assert store.get("example.org") == newer
    store.delete("example.org")
    assert store.get("example.org") is None


def test_sts05_store_keeps_failures_per_id(store: PolicyStore) -> None:
    f1 = FetchFailure("1", 10.0, "sts-webpki-invalid", "certificate expired")
    store.record_failure("example.org", f1)
    store.record_failure("example.org", FetchFailure("2", 20.0, "sts-policy-fetch-error", "x"))
    assert store.last_failure("example.org", "1") == f1
    assert store.last_failure("example.org", "3") is None
    assert store.last_failure("other.example", "1") is None
    store.clear_failures("example.org")
    assert store.last_failure("example.org", "2") is None


def test_sqlite_store_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.sqlite3"
    first = SqlitePolicyStore(path)
    entry = CacheEntry.fetched("example.org", POLICY, "1", 100.0)
    first.put(entry)
    first.record_failure("example.org", FetchFailure("2", 1.0, "sts-policy-fetch-error", "m"))
    first.close()
    second = SqlitePolicyStore(path)
    assert second.get("example.org") == entry
    assert second.get("example.org").policy.text == TEXT  # type: ignore[union-attr]
    assert second.last_failure("example.org", "2") is not None
    second.close()


def test_sqlite_store_unopenable_path_is_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PolicyStoreError, match="cannot open"):
        SqlitePolicyStore(blocker / "state.sqlite3")
