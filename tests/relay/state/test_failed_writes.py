"""An SQLite state that cannot be written: the relay's stores keep what they could not write
(bounded), count it by store and kind, and write it with the next write that succeeds."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from detect.errors import HistoryStoreError
from mtasts.model import Mode, Policy
from mtasts.state import CacheEntry
from relay.state.failed_writes import FailedWrites, WriteFailure, classify
from relay.state.stores import State, open_state
from relay.state.unsaved import Unsaved, UnsavedCounts
from relay.state_url import parse_state_url
from tests.tlsrpt_emit.sessions import DAY, sts
from tlsrpt_emit.errors import ReportStoreError
from tlsrpt_emit.model import PolicyKey, PolicyType
from tlsrpt_emit.sink import CountingSink
from tlsrpt_emit.store import SentReport, Tally

POLICY = Policy(Mode.ENFORCE, 86400, ("mx.example.org",), "version: STSv1\n")
NOW = 1_800_000_000.0


def _sqlite_error(setup: str, statement: str) -> sqlite3.Error:
    db = sqlite3.connect(":memory:")
    db.executescript(setup)
    try:
        db.executescript(statement)
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("no error")


def _translated(cause: BaseException) -> HistoryStoreError:
    """As `relay.state.database` raises it: our error, from the driver's."""
    try:
        raise HistoryStoreError(str(cause)) from cause
    except HistoryStoreError as exc:
        return exc


@pytest.mark.parametrize(
    ("cause", "kind"),
    [
        (
            _sqlite_error(
                "PRAGMA max_page_count = 2; CREATE TABLE t (x);",
                "INSERT INTO t VALUES (randomblob(100000));",
            ),
            WriteFailure.FULL,
        ),
        (
            _sqlite_error(
                "CREATE TABLE t (x); PRAGMA query_only = 1;", "INSERT INTO t VALUES (1);"
            ),
            WriteFailure.READONLY,
        ),
        (OSError(errno.ENOSPC, "No space left on device"), WriteFailure.FULL),
        (OSError(errno.EROFS, "Read-only file system"), WriteFailure.READONLY),
        (_sqlite_error("", "SELECT * FROM missing;"), WriteFailure.OTHER),
        (ValueError("x"), WriteFailure.OTHER),
    ],
)
def test_classify_by_the_driver_error(cause: BaseException, kind: WriteFailure) -> None:
    assert classify(_translated(cause)) is kind


def test_classify_postgresql_errors() -> None:
    psycopg = pytest.importorskip("psycopg")
    assert classify(_translated(psycopg.OperationalError("connection refused"))) is (
        WriteFailure.UNAVAILABLE
    )
    assert classify(_translated(psycopg.errors.DiskFull("no space"))) is WriteFailure.FULL
    assert classify(_translated(psycopg.errors.ReadOnlySqlTransaction("ro"))) is (
        WriteFailure.READONLY
    )
    assert classify(_translated(psycopg.errors.RaiseException("trigger"))) is WriteFailure.OTHER


class Counted:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def __call__(self, store: str, kind: str, writes: float) -> None:
        if writes:
            self.counts[store, kind] = self.counts.get((store, kind), 0) + int(writes)


def _read_only(state: State, on: bool) -> None:
    """The state file turns read-only under the relay (and back)."""
    with state.db.transaction() as tx:
        tx.execute(f"PRAGMA query_only = {int(on)}")


def test_sqlite_writes_that_fail_are_counted_kept_and_written_later(tmp_path: Path) -> None:
    counted = Counted()
    url = parse_state_url("", tmp_path / "state.sqlite3")
    state = open_state(url, failed_writes=FailedWrites(counted))
    sink = CountingSink(state.reports, clock=lambda: NOW)
    entry = CacheEntry.fetched("example.org", POLICY, "1", NOW)
    try:
        _read_only(state, True)
        with capture_logs() as logs:
            for n in range(3):  # none of these raises
                state.history.record(
                    "mx.example.org", offered_starttls=True, valid_cert=True, now=NOW + n
                )
                state.policies.put(entry)
                sink.record(sts())
                sink.flush()
        assert counted.counts == {
            ("history", "readonly"): 3,
            ("policy", "readonly"): 3,
            ("tlsrpt", "readonly"): 3,
        }
        failed = [e for e in logs if e["event"] == "state.write_failed"]
        assert sorted(e["store"] for e in failed) == ["history", "policy", "tlsrpt"]  # once each
        # What could not be written is still what this relay knows.
        held = state.history.get("mx.example.org")
        assert held is not None
        assert held.last_starttls_at == NOW + 2
        assert state.policies.get("example.org") == entry
        assert state.reports.counts(DAY) == []

        _read_only(state, False)
        with capture_logs() as logs:
            state.history.record(
                "mx.other.example", offered_starttls=False, valid_cert=False, now=NOW
            )
            state.policies.put(CacheEntry.fetched("other.example", POLICY, "1", NOW))
            sink.record(sts())
            sink.flush()
        assert [e["event"] for e in logs].count("state.writes_resumed") == 3
    finally:
        state.close()
    again = open_state(url, front=False)  # what another process reads from the file
    try:
        stored = again.history.get("mx.example.org")
        assert stored is not None
        assert stored.last_starttls_at == NOW + 2
        assert again.policies.get("example.org") == entry
        assert again.reports.counts(DAY)[0].successes == 4
    finally:
        again.close()


def test_the_cli_sees_the_failure(tmp_path: Path) -> None:
    state = open_state(parse_state_url("", tmp_path / "state.sqlite3"), front=False)
    try:
        _read_only(state, True)
        with pytest.raises(HistoryStoreError, match="readonly"):
            state.history.record("mx.example.org", offered_starttls=True, valid_cert=True, now=NOW)
    finally:
        state.close()


def test_what_is_kept_is_bounded() -> None:
    kept: Unsaved[str, int] = Unsaved(lambda old, new: new + (old or 0), limit=2)
    assert kept.keep("a", 1)
    assert kept.keep("b", 1)
    assert kept.keep("a", 1)
    assert not kept.keep("c", 1)  # full: a new key is not kept, the held ones still merge
    assert kept.take() == {"a": 2, "b": 1}
    counts = UnsavedCounts(limit=2)
    keys = [PolicyKey(DAY, f"d{n}.example", PolicyType.NO_POLICY_FOUND, ()) for n in range(3)]
    for key in keys:
        counts.add({key: Tally(successes=5)})
    assert counts.buffered == 10
    assert counts.lost == 5
    assert sorted(k.policy_domain for k in counts.take()) == ["d0.example", "d1.example"]


def test_what_is_held_is_written_at_close_when_it_can_be(tmp_path: Path) -> None:
    url = parse_state_url("", tmp_path / "state.sqlite3")
    state = open_state(url)
    sink = CountingSink(state.reports, clock=lambda: NOW)
    _read_only(state, True)
    state.history.record("mx.example.org", offered_starttls=True, valid_cert=True, now=NOW)
    state.policies.put(CacheEntry.fetched("example.org", POLICY, "1", NOW))
    sink.record(sts())
    sink.flush()
    _read_only(state, False)  # room again, and no write after it before the relay stops
    state.close()
    again = open_state(url, front=False)
    try:
        assert again.history.get("mx.example.org") is not None
        assert again.policies.get("example.org") is not None
        assert again.reports.counts(DAY)[0].successes == 1
    finally:
        again.close()


def test_the_daily_senders_writes_still_fail_and_are_counted(tmp_path: Path) -> None:
    """Claiming a report or recording its sending must not pretend: the sender retries."""
    counted = Counted()
    state = open_state(
        parse_state_url("", tmp_path / "state.sqlite3"), failed_writes=FailedWrites(counted)
    )
    try:
        _read_only(state, True)
        with pytest.raises(ReportStoreError):
            state.reports.claim(DAY, "example.org", now=NOW, lease=60)
        with pytest.raises(ReportStoreError):
            state.reports.put_sent(SentReport(day=DAY, domain="example.org", report_id="r1"))
        assert counted.counts == {("tlsrpt", "readonly"): 2}
        _read_only(state, False)
        assert state.reports.claim(DAY, "example.org", now=NOW, lease=60)
    finally:
        state.close()
