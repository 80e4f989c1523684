"""The state part of `stsguard check`: reachable or not, schema current or not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relay.state.check import state_check
from relay.state.stores import open_state
from relay.state_url import parse_state_url


def test_postgresql_schema_behind_then_current(pg_url: str) -> None:
    url = parse_state_url(pg_url, Path())
    problems, line = state_check(url)
    assert [p.level for p in problems] == ["warning"]
    assert (
        "schema not current (mtasts 0/1, detect 0/1, tlsrpt 0/2, prevalence 0/2,"
        " tlsrpt_received 0/2)"
    ) in line
    open_state(url, front=False).close()
    problems, line = state_check(url)
    assert problems == []
    assert line.endswith(
        "reachable, schema current (mtasts 1/1, detect 1/1, tlsrpt 2/2, prevalence 2/2,"
        " tlsrpt_received 2/2)"
    )


def test_unreachable_database_is_an_error(tmp_path: Path) -> None:
    url = parse_state_url(f"postgresql://nobody@/x?host={tmp_path}&port=1", Path())
    problems, line = state_check(url)
    assert [p.level for p in problems] == ["error"]
    assert "unreachable" in problems[0].message
    assert line.endswith("unreachable")


def test_sqlite_not_made_yet_newer_and_current(tmp_path: Path) -> None:
    url = parse_state_url("", tmp_path / "state.sqlite3")
    assert state_check(url) == (
        [],
        f"state: sqlite://{tmp_path}/state.sqlite3: not created yet (the relay creates it)",
    )
    open_state(url).close()
    assert state_check(url)[0] == []
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        db.execute("UPDATE stsguard_schema SET version = 5 WHERE component = 'detect'")
    problems, _ = state_check(url)
    assert [p.level for p in problems] == ["error"]
    assert "newer than this stsguard knows" in problems[0].message
