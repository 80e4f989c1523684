"""A fleet: two `stsguard relay` processes on one PostgreSQL, mail sent through both to the same
domains. A policy fetched through one is a cache hit on the other; a host that one relay saw
offer STARTTLS and that stops doing so defers on the other (remembered TLS is shared); the day's
TLS-RPT report of each domain is sent once, with the counts of both relays."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import smtplib
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import psycopg
import pytest

from lab.collector import ReportCollector
from lab.mx import CertKind
from lab.postgres import PgCluster
from lab.world import LabWorld, wait_until
from relay.state.stores import open_state
from relay.state_url import parse_state_url
from tests.relay_process import enforced_example_org, start_relay, stop_relay, write_config

pytestmark = pytest.mark.slow


def send(port: int, rcpt: str, n: int, within: float = 60.0) -> None:
    """One message through the relay on `port` (waiting for it to listen)."""
    msg = EmailMessage()
    msg["From"] = "app@upstream.test"
    msg["To"] = rcpt
    msg["Subject"] = f"fleet {n}"
    msg["Message-ID"] = f"<fleet-{n}@upstream.test>"
    msg.set_content(f"message {n}\n")
    deadline = time.monotonic() + within
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("app@upstream.test", [rcpt], msg.as_bytes(policy=SMTP))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def log_events(directory: Path) -> list[dict[str, object]]:
    path = directory / "relay.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


async def test_two_relays_share_policies_remembered_tls_and_one_report_per_domain(
    tmp_path: Path, pg_url: str
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await enforced_example_org(world)  # example.org: enforce, one good MX
        good_plain = await world.add_mx("mx.plain.example", "127.0.0.12", cert=CertKind.GOOD)
        world.publish_mx("plain.example", [(10, "mx.plain.example")])  # no MTA-STS
        stripped = await world.add_mx("mx-stripped.plain.example", "127.0.0.13", cert=CertKind.NONE)
        collector = ReportCollector(world.ca.issue("127.0.0.1").server_context(), statuses=[201])
        await world.keep(collector.running())
        for domain in ("example.org", "plain.example"):
            world.publish_tlsrpt(domain, collector.url(f"/{domain}"))
        relays: dict[str, tuple[Path, int]] = {}
        for name in ("a", "b"):
            directory = tmp_path / name
            directory.mkdir()
            relays[name] = write_config(
                world,
                directory,
                state={"url": pg_url},
                delivery={"retry_initial": "1h"},
                tlsrpt={"max_delay": "0s", "flush_interval": "1s"},
            )
        (a_file, a_port), (b_file, b_port) = relays["a"], relays["b"]
        a, b = start_relay(a_file), start_relay(b_file)
        try:
            # A policy fetched through relay a is a cache hit on relay b.
            for n in range(3):
                await asyncio.to_thread(send, a_port, "bob@example.org", n)
            await wait_until(lambda: len(mx.messages) == 3, 60)
            assert world.policy_host.requests["example.org"] == 1
            for n in range(3, 5):
                await asyncio.to_thread(send, b_port, "bob@example.org", n)
            await wait_until(lambda: len(mx.messages) == 5, 60)
            assert world.policy_host.requests["example.org"] == 1  # b used a's fetch
            assert all(m.tls for m in mx.messages)

            # Relay a sees mx.plain.example offer STARTTLS; then it stops (the attacker's
            # address), and relay b, which never talked to it, defers.
            await asyncio.to_thread(send, a_port, "carol@plain.example", 10)
            await wait_until(lambda: len(good_plain.messages) == 1, 60)
            assert good_plain.messages[0].tls
            world.dns.set("mx.plain.example", "A", ["127.0.0.13"])
            await asyncio.to_thread(send, b_port, "carol@plain.example", 11)

            def b_saw_downgrade() -> bool:
                return any(
                    e.get("event") == "delivery.attempt" and "downgrade" in json.dumps(e)
                    for e in log_events(b_file.parent)
                )

            await wait_until(b_saw_downgrade, 60)
            assert stripped.messages == []  # deferred, not sent in plaintext

            # Both relays' counts land in the shared store (flushed every second).
            fleet = open_state(parse_state_url(pg_url, Path()), front=False)
            try:

                def counted() -> bool:
                    rows = {r.key.policy_domain: r for r in fleet.reports.counts(today)}
                    return (
                        "example.org" in rows
                        and rows["example.org"].successes == 5
                        and "plain.example" in rows
                        and rows["plain.example"].successes + rows["plain.example"].failure_total
                        == 2
                    )

                await wait_until(counted, 30)
            finally:
                fleet.close()
        finally:
            stop_relay(a)
            stop_relay(b)

        # Midnight passes (the day's rows become yesterday's), and both relays start again at
        # once: each runs yesterday's reports at start (max_delay 0) and races for every domain.
        yesterday = today - dt.timedelta(days=1)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE tlsrpt_policy SET day = %s WHERE day = %s",
                (yesterday.isoformat(), today.isoformat()),
            )
        a, b = start_relay(a_file), start_relay(b_file)
        fleet = open_state(parse_state_url(pg_url, Path()), front=False)
        try:

            def both_delivered() -> bool:
                sent = [
                    fleet.reports.get_sent(yesterday, d) for d in ("example.org", "plain.example")
                ]
                return all(s is not None and s.status == "delivered" for s in sent)

            await wait_until(both_delivered, 60)

            def both_ran() -> bool:
                return all(
                    any(e.get("event") == "tlsrpt.daily_run" for e in log_events(f.parent))
                    for f in (a_file, b_file)
                )

            await wait_until(both_ran, 60)
        finally:
            fleet.close()
            stop_relay(a)
            stop_relay(b)

    by_domain: dict[str, list[dict[str, object]]] = {}
    for request in collector.received:
        report = json.loads(gzip.decompress(request.body))
        by_domain.setdefault(request.path.strip("/"), []).append(report)
    assert sorted(by_domain) == ["example.org", "plain.example"]
    assert [len(reports) for reports in by_domain.values()] == [1, 1], "one report per domain"
    (example,) = by_domain["example.org"]
    summary = example["policies"][0]["summary"]  # type: ignore[index]
    assert summary == {"total-successful-session-count": 5, "total-failure-session-count": 0}
    (plain,) = by_domain["plain.example"]
    summary = plain["policies"][0]["summary"]  # type: ignore[index]
    assert summary == {"total-successful-session-count": 1, "total-failure-session-count": 1}


async def test_relay_delivers_through_a_database_outage(
    tmp_path: Path, own_pg_cluster: PgCluster
) -> None:
    """The database stops under a running relay: mail to a known domain and to a new one is still
    delivered; the outage is logged once, its end once, and what was counted and fetched
    meanwhile reaches the database when it is back."""
    cluster = own_pg_cluster
    url = cluster.new_database()
    today = dt.datetime.now(dt.UTC).date()
    async with LabWorld(tmp_path / "world").running() as world:
        known = await enforced_example_org(world)
        new = await world.add_mx("mx1.second.example", "127.0.0.12", cert=CertKind.GOOD)
        world.publish_mx("second.example", [(10, "mx1.second.example")])
        world.publish_policy("second.example", "enforce", ["mx1.second.example"])
        config_file, port = write_config(
            world, tmp_path, state={"url": url}, tlsrpt={"flush_interval": "1s"}
        )
        relay = start_relay(config_file)
        try:
            await asyncio.to_thread(send, port, "bob@example.org", 1)
            await wait_until(lambda: len(known.messages) == 1, 60)
            await asyncio.to_thread(cluster.stop)
            await asyncio.to_thread(send, port, "bob@example.org", 2)
            await asyncio.to_thread(send, port, "carol@second.example", 3)
            await wait_until(lambda: len(known.messages) == 2 and len(new.messages) == 1, 60)
            assert world.policy_host.requests["example.org"] == 1  # from memory
            assert world.policy_host.requests["second.example"] == 1  # fetched
            await wait_until(
                lambda: any(e.get("event") == "state.unavailable" for e in log_events(tmp_path)),
                60,
            )
            await asyncio.to_thread(cluster.start)
            await wait_until(
                lambda: any(e.get("event") == "state.available" for e in log_events(tmp_path)),
                60,
            )
            state = open_state(parse_state_url(url, Path()), front=False)
            try:

                def caught_up() -> bool:
                    rows = {r.key.policy_domain: r.successes for r in state.reports.counts(today)}
                    return rows == {"example.org": 2, "second.example": 1}

                await wait_until(caught_up, 30)
                assert state.policies.get("second.example") is not None
            finally:
                state.close()
        finally:
            stop_relay(relay)
    events = [e.get("event") for e in log_events(tmp_path)]
    assert events.count("state.unavailable") == 1
    assert events.count("state.available") == 1
    assert all(m.tls for m in [*known.messages, *new.messages])
