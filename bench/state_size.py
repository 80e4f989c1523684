"""How big the shared state grows: N domains' worth of policies, remembered TLS and one day of
TLS-RPT counts, in PostgreSQL (a private cluster) and SQLite. `python bench/state_size.py [N]`.

Per domain: an enforce policy naming 2 MX hosts (the text ~150 bytes), remembered TLS for both
hosts, one day's counts with successes and 2 kinds of failure, and the sent report's progress.
"""

from __future__ import annotations

import datetime
import sys
import tempfile
from pathlib import Path

from lab.postgres import PgCluster
from mtasts.model import Mode, Policy
from mtasts.state import CacheEntry
from relay.state.stores import State, open_state
from relay.state_url import parse_state_url
from tlsrpt_emit.model import FailureKey, PolicyKey, PolicyType, ResultType
from tlsrpt_emit.store import SentReport, Tally

TABLES = (
    "mtasts_policy",
    "mtasts_failure",
    "detect_tls_history",
    "tlsrpt_policy",
    "tlsrpt_failure",
    "tlsrpt_sent",
    "tlsrpt_claim",
)
DAY = datetime.date(2026, 12, 1)
NOW = 1_800_000_000.0


def fill(state: State, n: int, day: datetime.date = DAY, *, counts_only: bool = False) -> None:
    batch: dict[PolicyKey, Tally] = {}
    for i in range(n):
        domain = f"domain{i}.example"
        mx = (f"mx1.{domain}", f"mx2.{domain}")
        text = f"version: STSv1\nmode: enforce\nmx: {mx[0]}\nmx: {mx[1]}\nmax_age: 604800\n"
        policy = Policy(Mode.ENFORCE, 604800, mx, text)
        if not counts_only:
            state.policies.put(CacheEntry.fetched(domain, policy, "20261201T000000", NOW))
            for host in mx:
                state.history.record(host, offered_starttls=True, valid_cert=True, now=NOW)
        tally = Tally(successes=40)
        for result in (ResultType.CERTIFICATE_EXPIRED, ResultType.STARTTLS_NOT_SUPPORTED):
            key = FailureKey(result, "192.0.2.1", mx[0], "", "198.51.100.7", "", "")
            tally.failures[key] = 3
        batch[PolicyKey(day, domain, PolicyType.STS, tuple(text.splitlines()))] = tally
        state.reports.claim(day, domain, now=NOW, lease=900)
        state.reports.put_sent(SentReport(day, domain, f"{day}_{domain}", status="delivered"))
    state.reports.add_counts(batch)


def postgres_bytes(cluster: PgCluster, url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        total = 0
        for table in TABLES:
            row = conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()
            total += int(row[0]) if row else 0
    return total


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    cluster, why = PgCluster.find()
    if cluster is None:
        print(f"no PostgreSQL: {why}")
        return 1
    cluster.init()
    cluster.start()
    try:
        url = cluster.new_database()
        state = open_state(parse_state_url(url, Path()), front=False)
        empty = postgres_bytes(cluster, url)
        fill(state, n)
        full = postgres_bytes(cluster, url)
        fill(state, n, DAY + datetime.timedelta(days=1), counts_only=True)
        state.close()
        two_days = postgres_bytes(cluster, url)
    finally:
        cluster.remove()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.sqlite3"
        sqlite = open_state(parse_state_url("", path))
        fill(sqlite, n)
        sqlite.db.close()
        sqlite_bytes = path.stat().st_size + sum(
            p.stat().st_size for p in Path(tmp).glob("state.sqlite3-*")
        )
    print(f"{n} domains:")
    print(f"  PostgreSQL: {(full - empty) / 1024:.0f} KiB in our tables (indexes included)")
    print(f"  PostgreSQL: {(two_days - full) / 1024:.0f} KiB more for each further day of counts")
    print(f"  SQLite:     {sqlite_bytes / 1024:.0f} KiB file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
