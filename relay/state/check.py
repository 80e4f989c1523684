"""The state check `stsguard check` runs: is the database reachable, is its schema current?"""

from __future__ import annotations

from relay.problems import Problem
from relay.state.database import StateError, open_database
from relay.state.migrations import status
from relay.state.stores import SCHEMAS
from relay.state_url import StateUrl


def state_check(url: StateUrl) -> tuple[list[Problem], str]:
    """Problems (an unreachable database is an error: mail flows, but unshared), and one line
    saying what was found."""
    where = url.redacted()
    if url.path is not None and not url.path.exists():
        return [], f"state: {where}: not created yet (the relay creates it)"
    try:
        db = open_database(url)
    except StateError as exc:
        return [Problem("error", f"[state].url: {exc}")], f"state: {where}: cannot open"
    try:
        found = status(db, SCHEMAS)
    except StateError as exc:
        return [
            Problem("error", f"[state].url: unreachable: {exc}")
        ], f"state: {where}: unreachable"
    finally:
        db.close()
    behind = [s for s in found if s.version < s.latest]
    ahead = [s for s in found if s.version > s.latest]
    versions = ", ".join(f"{s.component} {s.version}/{s.latest}" for s in found)
    if ahead:
        problem = Problem(
            "error", f"[state].url: schema newer than this stsguard knows ({versions}); upgrade"
        )
        return [problem], f"state: {where}: reachable, schema newer ({versions})"
    if behind:
        problem = Problem(
            "warning",
            f"[state].url: schema not current ({versions}); the relay migrates it at start",
        )
        return [problem], f"state: {where}: reachable, schema not current ({versions})"
    return [], f"state: {where}: reachable, schema current ({versions})"
