"""What only the SQL stores have: a file that survives a restart, an older state file adopted,
versioned schemas, translated errors, and correctness when several relays write at once."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from detect.errors import HistoryStoreError
from mtasts.errors import PolicyStoreError
from mtasts.model import Mode, Policy
from mtasts.state import CacheEntry
from relay.state.database import SqliteDatabase, StateError
from relay.state.migrations import status
from relay.state.stores import SCHEMAS, open_state
from relay.state_url import parse_state_url
from tests.tlsrpt_emit.sessions import DAY, NOON, sts
from tlsrpt_emit.errors import ReportStoreError
from tlsrpt_emit.model import ResultType
from tlsrpt_emit.sink import CountingSink, count_into
from tlsrpt_emit.store import SentReport

POLICY = Policy(Mode.ENFORCE, 86400, ("mx.example.org",), "version: STSv1\n")
NOW = 1_800_000_000.0

# The tables as stsguard made them before schema versions (what an existing state file holds).
OLD_SCHEMA = """
CREATE TABLE mtasts_policy (domain TEXT PRIMARY KEY, record_id TEXT NOT NULL, mode TEXT NOT NULL,
    max_age INTEGER NOT NULL, mx TEXT NOT NULL, text TEXT NOT NULL, fetched_at REAL NOT NULL,
    expires_at REAL NOT NULL);
CREATE TABLE mtasts_failure (domain TEXT NOT NULL, record_id TEXT NOT NULL, failed_at REAL NOT NULL,
    result_type TEXT NOT NULL, message TEXT NOT NULL, PRIMARY KEY (domain, record_id));
CREATE TABLE detect_tls_history (host TEXT PRIMARY KEY, last_starttls_at REAL,
    last_valid_cert_at REAL, last_seen_at REAL NOT NULL);
CREATE TABLE other (x);
INSERT INTO other VALUES (1);
INSERT INTO mtasts_policy VALUES ('example.org', '1', 'enforce', 86400, '["mx.example.org"]',
    'version: STSv1', 100.0, 86500.0);
INSERT INTO detect_tls_history VALUES ('mx.example.org', 5.0, 6.0, 7.0);
"""


def sqlite_url(path: Path):  # type: ignore[no-untyped-def]
    return parse_state_url(f"sqlite://{path}", Path())


def test_sqlite_survives_restart(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "state" / "state.sqlite3")
    first = open_state(url)
    entry = CacheEntry.fetched("example.org", POLICY, "1", 100.0)
    first.policies.put(entry)
    first.history.record("mx.example.org", offered_starttls=True, valid_cert=True, now=NOW)
    sink = CountingSink(first.reports, clock=lambda: 0.0)
    sink.record(sts())
    sink.flush()
    sent = SentReport(day=DAY, domain="example.org", report_id="r1", first_attempt=NOON)
    first.reports.put_sent(sent)
    first.close()
    again = open_state(url)
    assert again.policies.get("example.org") == entry
    assert again.history.get("mx.example.org") is not None
    assert again.reports.counts(DAY)[0].successes == 1
    assert again.reports.get_sent(DAY, "example.org") == sent
    again.close()


def test_sqlite_file_from_before_schema_versions_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    state = open_state(sqlite_url(path))
    try:
        assert state.policies.get("example.org") is not None
        assert state.history.get("mx.example.org") is not None
        assert state.reports.claim(DAY, "example.org", now=NOW, lease=60)  # the new table
        assert all(s.current for s in status(state.db, SCHEMAS))
    finally:
        state.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT x FROM other").fetchall() == [(1,)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_schema_newer_than_known_is_refused(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "state.sqlite3")
    open_state(url).close()
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        db.execute("UPDATE stsguard_schema SET version = 99 WHERE component = 'tlsrpt'")
    with pytest.raises(StateError, match="newer than this stsguard knows"):
        open_state(url)


def test_unopenable_file_is_one_state_error(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite3").mkdir()
    with pytest.raises(StateError, match=r"state\.sqlite3: cannot open"):
        SqliteDatabase(tmp_path / "state.sqlite3")


def test_each_library_sees_its_own_error(tmp_path: Path) -> None:
    state = open_state(sqlite_url(tmp_path / "state.sqlite3"))
    state.close()
    with pytest.raises(PolicyStoreError):
        state.policies.get("example.org")
    with pytest.raises(HistoryStoreError):
        state.history.all()
    with pytest.raises(ReportStoreError):
        state.reports.domains(DAY)


# --- several relays at once (PostgreSQL) ----------------------------------------------------


def _together(n: int, work) -> list[object]:  # type: ignore[no-untyped-def]
    """Run `work(i)` in n threads released at the same moment; their results."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


def test_relays_starting_together_migrate_once(pg_url: str) -> None:
    url = parse_state_url(pg_url, Path())
    states = _together(4, lambda i: open_state(url, front=False))
    try:
        assert all(s.current for s in status(states[0].db, SCHEMAS))  # type: ignore[attr-defined]
    finally:
        for s in states:
            s.close()  # type: ignore[attr-defined]


def test_counts_from_concurrent_relays_add_up(pg_url: str) -> None:
    url = parse_state_url(pg_url, Path())
    relays = [open_state(url, front=False) for _ in range(4)]
    batches = 25

    def relay_writes(i: int) -> None:
        for _ in range(batches):
            batch = {}  # type: ignore[var-annotated]
            count_into(batch, sts())
            count_into(batch, sts(ResultType.CERTIFICATE_EXPIRED))
            count_into(batch, replace(sts(), policy_domain="other.example"))
            relays[i].reports.add_counts(batch)

    try:
        _together(4, relay_writes)
        rows = {r.key.policy_domain: r for r in relays[0].reports.counts(DAY)}
        assert rows["example.org"].successes == 4 * batches
        assert rows["example.org"].failure_total == 4 * batches
        assert rows["other.example"].successes == 4 * batches
    finally:
        for r in relays:
            r.close()


def test_one_claim_wins_among_relays_claiming_together(pg_url: str) -> None:
    url = parse_state_url(pg_url, Path())
    relays = [open_state(url, front=False) for _ in range(6)]
    try:
        for domain in ("a.example", "b.example", "c.example"):
            won = _together(
                6,
                lambda i: relays[i].reports.claim(DAY, domain, now=NOW, lease=600),  # noqa: B023
            )
            assert won.count(True) == 1, (domain, won)
        # The winner's lease blocks everyone until it runs out; then one may take it over.
        assert not relays[0].reports.claim(DAY, "a.example", now=NOW + 599, lease=600)
        late = _together(
            6, lambda i: relays[i].reports.claim(DAY, "a.example", now=NOW + 601, lease=600)
        )
        assert late.count(True) == 1
    finally:
        for r in relays:
            r.close()


def test_history_from_concurrent_relays_keeps_the_latest_facts(pg_url: str) -> None:
    url = parse_state_url(pg_url, Path())
    relays = [open_state(url, front=False) for _ in range(4)]
    try:
        _together(
            4,
            lambda i: relays[i].history.record(
                "mx.example.org", offered_starttls=i % 2 == 0, valid_cert=i == 1, now=NOW + i
            ),
        )
        got = relays[0].history.get("mx.example.org")
        assert got is not None
        assert (got.last_starttls_at, got.last_valid_cert_at, got.last_seen_at) == (
            NOW + 2,
            NOW + 1,
            NOW + 3,
        )
    finally:
        for r in relays:
            r.close()
