"""A state store that cannot be written under a running `stsguard relay` process: the SQLite file
on a volume that fills up after start (the spool on another disk), and PostgreSQL stopped or
answering errors. Each message reaches the MX exactly once, the relay keeps running and
delivering, and `stsguard_state_errors_total{store,kind}` says what could not be written."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.mx import CertKind, LabMx
from lab.postgres import PgCluster
from lab.world import LabWorld, free_port, wait_until
from tests.relay.test_fleet import log_events, send
from tests.relay_process import start_relay, stop_relay, write_config

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def small_volume(size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on a temporary directory (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="stsguard-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill(volume: Path) -> None:
    """Write to `volume` until it is full."""
    chunk = b"\0" * 65536
    with (volume / "filler").open("wb", buffering=0) as filler:
        while True:
            try:
                filler.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
                if not chunk:
                    return


def state_errors(metrics_port: int) -> dict[tuple[str, str], float]:
    """`stsguard_state_errors_total` by (store, kind), from the relay's /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    with direct.open(url, timeout=5) as answer:
        text = answer.read().decode()
    found = re.findall(
        r'^stsguard_state_errors_total\{kind="(\w+)",store="(\w+)"\} (\S+)$', text, re.M
    )
    return {(store, kind): float(value) for kind, store, value in found}


async def never_seen_mx(world: LabWorld, name: str, ip: str, *, sts: bool = False) -> LabMx:
    """`name`'s domain: an MX the relay has never talked to (under an enforce policy: `sts`)."""
    domain = name.partition(".")[2]
    mx = await world.add_mx(name, ip, cert=CertKind.GOOD)
    world.publish_mx(domain, [(10, name)])
    if sts:
        world.publish_policy(domain, "enforce", [name])
    return mx


def subjects(mx: LabMx) -> list[bytes]:
    return sorted(m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in mx.messages)


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def queue_empty(directory: Path) -> bool:
    """No message file left in the relay's spool (`state_dir/queue/msg`)."""
    return not any((directory / "state" / "queue" / "msg").iterdir())


async def test_sqlite_state_on_a_volume_that_fills_up(tmp_path: Path) -> None:
    with small_volume("4m") as volume:
        async with LabWorld(tmp_path / "world").running() as world:
            # The remembered-TLS write after the 250 fails (the issue: each arrived twice) ...
            mx = await never_seen_mx(world, "mx.plain.example", "127.0.9.11")
            # ... and so does caching a freshly fetched MTA-STS policy, before the message.
            sts_mx = await never_seen_mx(world, "mx1.example.org", "127.0.9.13", sts=True)
            metrics_port = free_port()
            config_file, port = write_config(
                world,
                tmp_path,
                relay={"metrics_listen": f"127.0.0.1:{metrics_port}"},
                state={"url": f"sqlite://{volume / 'state.sqlite3'}"},
                delivery={"retry_initial": "1s"},  # a deferral would be delivered again at once
                tlsrpt={"flush_interval": "1s"},
            )
            relay = start_relay(config_file)
            try:
                await wait_until(lambda: (volume / "state.sqlite3").exists(), 30)
                await wait_until(lambda: listening(port), 30)
                await asyncio.to_thread(fill, volume)
                for n in (1, 2, 3):
                    await asyncio.to_thread(send, port, f"bob{n}@plain.example", n)
                await asyncio.to_thread(send, port, "carol@example.org", 4)
                await wait_until(lambda: len(mx.messages) >= 3 and sts_mx.messages, 60)
                await wait_until(lambda: queue_empty(tmp_path), 60)

                def counted() -> bool:
                    errors = state_errors(metrics_port)
                    return errors[("history", "full")] >= 1 and errors[("policy", "full")] >= 1

                await wait_until(counted, 30)
                assert relay.poll() is None
                await asyncio.to_thread(send, port, "bob5@plain.example", 5)  # still delivering
                await wait_until(lambda: len(mx.messages) >= 4, 60)
                await wait_until(lambda: queue_empty(tmp_path), 60)
                assert relay.poll() is None
            finally:
                stop_relay(relay)
    assert subjects(mx) == [b"fleet 1", b"fleet 2", b"fleet 3", b"fleet 5"]  # each exactly once
    assert subjects(sts_mx) == [b"fleet 4"]
    events = [e.get("event") for e in log_events(tmp_path)]
    assert "delivery.internal_error" not in events
    assert "queue.delivery_error" not in events
    failed = [e for e in log_events(tmp_path) if e.get("event") == "state.write_failed"]
    assert {(e["store"], e["kind"]) for e in failed} >= {("history", "full"), ("policy", "full")}
    assert len(failed) == len({(e["store"], e["kind"]) for e in failed})  # once each


@pytest.mark.parametrize("failure", ["stopped", "erroring"])
async def test_postgresql_stopped_or_erroring(
    tmp_path: Path, failure: str, own_pg_cluster: PgCluster
) -> None:
    cluster = own_pg_cluster
    url = cluster.new_database()
    async with LabWorld(tmp_path / "world").running() as world:
        mx = await never_seen_mx(world, "mx1.example.org", "127.0.9.12", sts=True)
        metrics_port = free_port()
        config_file, port = write_config(
            world,
            tmp_path,
            relay={"metrics_listen": f"127.0.0.1:{metrics_port}"},
            state={"url": url},
            delivery={"retry_initial": "1s"},
            tlsrpt={"flush_interval": "1s"},
        )
        relay = start_relay(config_file)
        try:
            await wait_until(lambda: listening(port), 30)
            if failure == "stopped":
                await asyncio.to_thread(cluster.stop)
            else:
                await asyncio.to_thread(_refuse_history_writes, url)
            for n in (1, 2, 3):
                await asyncio.to_thread(send, port, f"bob{n}@example.org", n)
            await wait_until(lambda: len(mx.messages) >= 3, 60)
            await wait_until(lambda: queue_empty(tmp_path), 60)
            kind = "unavailable" if failure == "stopped" else "other"
            await wait_until(lambda: state_errors(metrics_port)[("history", kind)] >= 1, 30)
            assert relay.poll() is None
            if failure == "erroring":
                # The other stores catch up although remembered TLS still cannot.
                await wait_until(lambda: _sessions_counted(url) == 3, 60)
        finally:
            stop_relay(relay)
    assert subjects(mx) == [b"fleet 1", b"fleet 2", b"fleet 3"]  # each exactly once
    events = [e.get("event") for e in log_events(tmp_path)]
    assert "delivery.internal_error" not in events
    assert "queue.delivery_error" not in events


def _refuse_history_writes(url: str) -> None:
    """PostgreSQL answers every remembered-TLS write with an error (a trigger raising)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger AS"
            " $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON detect_tls_history"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )


def _sessions_counted(url: str) -> int:
    """TLS-RPT sessions (successes) in the shared database, all days."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT COALESCE(SUM(successes), 0) FROM tlsrpt_policy").fetchone()
    return int(row[0]) if row else 0
