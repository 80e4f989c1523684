"""Backlog benchmark: `stsguard relay` with N messages queued to a dead destination.

    .venv/bin/python bench/backlog.py --messages 20000 100000 [--idle-seconds 60] [--json FILE]

Loopback only, no root: the lab DNS server (`lab.dns.LabDns`) on 127.0.0.1 answers
``dead.bench.test MX 10 mx.dead.bench.test`` and ``mx.dead.bench.test A 127.0.0.99``, where
nothing listens (every connection is refused: the destination is dead). The messages are written
straight into the spool (one ``msg/ID`` file each, as intake writes them, without the fsync), then:

1. the relay starts; *start to accepting* is the time until its SMTP port takes a connection;
2. it is left alone until it settles (its CPU use over 5 s below 5% of a core, at most 180 s): it
   has read the queue, found the destination dead and parked the messages;
3. *idle CPU* is its user+system CPU over the next `--idle-seconds`, as % of one core and as CPU
   seconds per minute; *RSS* is VmRSS then;
4. SIGTERM, then start again: *restart to accepting* and the stop's duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from procstat import status_kib, tree_cpu  # noqa: E402

from lab.dns import LabDns  # noqa: E402
from lab.world import free_port, to_toml  # noqa: E402
from relay.queue.envelope import encode_envelope as _encode  # noqa: E402
from relay.queue.spool import Spool  # noqa: E402

BODY = (
    b"From: app@upstream.test\r\nTo: user@dead.bench.test\r\nSubject: backlog\r\n\r\n"
    + b"x" * 2000
    + b"\r\n"
)


def fill(spool: Spool, count: int) -> float:
    """`count` messages to user@dead.bench.test, written as intake writes them (no fsync)."""
    started = time.monotonic()
    msg_dir = spool.directory / "msg"
    for _ in range(count):
        message = spool.new_message("app@upstream.test", ["user@dead.bench.test"], len(BODY))
        (msg_dir / message.id).write_bytes(_encode(message) + b"\n" + BODY)
    return time.monotonic() - started


def accepting(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], float, int]:
    """Start the relay; (process, seconds to accepting, port)."""
    port = int(config.read_text().split("listen = ")[1].split(":")[1].split('"')[0])
    out = log.open("ab")
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "relay", "--config", str(config)],
        stdout=out,
        stderr=out,
        cwd=ROOT,
    )
    while not accepting(port):
        if proc.poll() is not None:
            raise SystemExit(f"relay exited with {proc.returncode}; see {log}")
        time.sleep(0.01)
    return proc, time.monotonic() - began, port


def settle(pid: int, *, limit: float = 180) -> float:
    """Wait until the process uses under 5% of a core over 5 s; seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        before = tree_cpu(pid)
        time.sleep(5)
        if (tree_cpu(pid) - before) / 5 < 0.05:
            break
    return time.monotonic() - began


async def run_one(count: int, idle_seconds: float, work: Path) -> dict[str, Any]:
    state = work / f"state-{count}"
    spool = Spool(state / "queue")
    fill_seconds = fill(spool, count)
    async with LabDns().running() as dns:
        dns.set("dead.bench.test", "MX", ["10 mx.dead.bench.test."])
        dns.set("mx.dead.bench.test", "A", ["127.0.0.99"])
        settings = {
            "relay": {
                "listen": f"127.0.0.1:{free_port()}",
                "hostname": "relay.bench.test",
                "state_dir": str(state),
                "log_format": "json",
                "log_level": "info",
            },
            "delivery": {"port": free_port("127.0.0.99"), "connect_timeout": "5s"},
            "dns": {"nameservers": [dns.address], "timeout": "2s"},
            "tlsrpt": {"enabled": False},
        }
        config = work / f"relay-{count}.toml"
        config.write_text(to_toml(settings))
        log = work / f"relay-{count}.log"

        def measure() -> dict[str, Any]:
            proc, to_accepting, _ = start(config, log)
            try:
                settled = settle(proc.pid)
                cpu_before = tree_cpu(proc.pid)
                time.sleep(idle_seconds)
                idle_cpu = tree_cpu(proc.pid) - cpu_before
                rss_kib = status_kib(proc.pid, "VmRSS")
                stop_began = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
                stop_seconds = time.monotonic() - stop_began
                proc, restart_to_accepting, _ = start(config, log)
                loaded = _loaded_after(log, proc)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            return {
                "messages": count,
                "fill_seconds": round(fill_seconds, 1),
                "start_to_accepting_s": round(to_accepting, 3),
                "settle_s": round(settled, 1),
                "idle_cpu_s_per_min": round(idle_cpu * 60 / idle_seconds, 3),
                "idle_cpu_pct_of_core": round(100 * idle_cpu / idle_seconds, 2),
                "rss_mib": round(rss_kib / 1024, 1),
                "rss_bytes_per_message": round(rss_kib * 1024 / count),
                "stop_s": round(stop_seconds, 2),
                "restart_to_accepting_s": round(restart_to_accepting, 3),
                "restart_queue_loaded_s": loaded,
            }

        return await asyncio.to_thread(measure)


def _loaded_after(log: Path, proc: subprocess.Popen[bytes]) -> float | None:
    """The `seconds` of the last `queue.loaded` line (reading the queue, in the background)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in log.read_text().splitlines() if '"queue.loaded"' in x]
        if len(lines) >= 2:
            return float(lines[-1]["seconds"])
        time.sleep(0.2)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stsguard-backlog."))
    results = []
    for count in args.messages:
        result = asyncio.run(run_one(count, args.idle_seconds, work))
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    else:
        print(f"work directory: {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
