"""`stsguard socketmap` next to postfix-mta-sts-resolver, as Postfix's smtp_tls_policy_maps.

    sudo .venv/bin/python bench/socketmap_compare.py [--seconds 3] [--cold 200] [--rounds 3]
        [--unix] [--resolver-uvloop] [--json FILE]

Loopback only: the script runs itself again under ``unshare --net --mount`` (as `bench/run`
does), where the only interface is loopback and /etc/resolv.conf names the lab DNS; the lab DNS
and policy host run in a process of their own (`bench/lab_services.py`). Both map servers answer
``postfix DOMAIN`` requests over TCP (or Unix sockets): warm (one domain asked again and again)
and cold (every query a domain neither has seen, each with its own TXT record and policy), from
1 and from 8 concurrent client connections, one request at a time on each as Postfix sends them.
The client is the same for both (asyncio streams on uvloop, in this process). Figures: queries
per wall second, and queries per CPU second of the server's process (user + system, from /proc);
for cold runs also the TXT queries and policy fetches per domain counted at the lab servers.
Beside them a floor server (`socketmap_floor.py`: a fixed reply per read) shows what the event
loop and the kernel cost alone. Rounds alternate the order. postfix-mta-sts-resolver is the
version `bench/run` installs (its venv in ~/.cache/stsguard-bench), as its README installs it
(without uvloop); `--resolver-uvloop` runs it on uvloop as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import procstat
import uvloop
from harness import (
    DNS_IP,
    LAB_CONTROL,
    POLICY_IP,
    PY,
    RESOLVER_PORT,
    ROOT,
    SINK_IP,
    Processes,
    ask,
    enter_lab_network,
    log,
    socketmap_query,
    wait_port,
)

STSGUARD_PORT = 8462
FLOOR_PORT = 8463
WARM = "bench.test"
CLIENTS = (1, 8)
RESOLVER_VENV = Path.home() / ".cache" / "stsguard-bench" / "resolver-venv-1.5.1"
NAMESPACE_FLAG = "STSGUARD_SOCKETMAP_BENCH_NS"
UVLOOP_FOR_RESOLVER = Path.home() / ".cache" / "stsguard-bench" / "uvloop-for-resolver"
RESOLVER_UVLOOP: Path | None = None  # set by --resolver-uvloop


def cold_domains(who: str, clients: int, count: int, round_: int) -> list[str]:
    return [f"c{i}.{who}{clients}r{round_}.test" for i in range(count)]


async def open_to(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``host:port`` or a Unix socket path."""
    if address.startswith("/"):
        return await asyncio.open_unix_connection(address)
    host, _, port = address.rpartition(":")
    return await asyncio.open_connection(host, int(port))


async def warm_run(address: str, clients: int, seconds: float) -> tuple[int, bytes]:
    """Queries answered by `clients` connections asking for WARM back to back."""
    conns = [await open_to(address) for _ in range(clients)]
    reply = await socketmap_query(*conns[0], WARM)
    done = 0
    stop_at = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            await socketmap_query(*conns[i], WARM)
            done += 1

    async with asyncio.TaskGroup() as tasks:
        for i in range(clients):
            tasks.create_task(worker(i))
    for _, writer in conns:
        writer.close()
    return done, reply


async def cold_run(address: str, clients: int, domains: list[str]) -> list[bytes]:
    """Every domain asked once, by `clients` connections taking them in turn."""
    conns = [await open_to(address) for _ in range(clients)]
    queue = list(reversed(domains))
    replies: list[bytes] = []

    async def worker(i: int) -> None:
        while queue:
            replies.append(await socketmap_query(*conns[i], queue.pop()))

    async with asyncio.TaskGroup() as tasks:
        for i in range(clients):
            tasks.create_task(worker(i))
    for _, writer in conns:
        writer.close()
    return replies


def measure_warm(pid: int, address: str, clients: int, seconds: float) -> dict[str, Any]:
    cpu0, t0 = procstat.tree_cpu(pid), time.monotonic()
    done, reply = uvloop.run(warm_run(address, clients, seconds))
    wall, cpu = time.monotonic() - t0, procstat.tree_cpu(pid) - cpu0
    return {
        "queries": done,
        "per_s": done / wall,
        "per_cpu_s": done / cpu if cpu else 0.0,
        "reply": reply.decode(),
    }


def measure_cold_clients(
    pid: int, address: str, clients: int, domains: list[str]
) -> dict[str, Any]:
    cpu0, t0 = procstat.tree_cpu(pid), time.monotonic()
    replies = uvloop.run(cold_run(address, clients, domains))
    wall, cpu = time.monotonic() - t0, procstat.tree_cpu(pid) - cpu0
    txt = sum(int(ask(DNS_IP, LAB_CONTROL, f"TXT {d}")) for d in domains)
    https = sum(int(ask(DNS_IP, LAB_CONTROL, f"HTTPS {d}")) for d in domains)
    return {
        "queries": len(replies),
        "per_s": len(replies) / wall,
        "per_cpu_s": len(replies) / cpu if cpu else 0.0,
        "secure_replies": sum(r.startswith(b"OK secure") for r in replies),
        "txt_per_domain": txt / len(domains),
        "https_per_domain": https / len(domains),
    }


def measure(
    pid: int, address: str, who: str, round_: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One round of `who`: warm with 1 and 8 clients, and (not for the floor) cold."""
    uvloop.run(warm_run(address, 1, 0.2))  # the warm domain in the cache
    result: dict[str, Any] = {}
    for clients in CLIENTS:
        result[f"warm_{clients}"] = measure_warm(pid, address, clients, args.seconds)
        if who != "floor" and args.cold:
            domains = cold_domains(who, clients, args.cold, round_)
            result[f"cold_{clients}"] = measure_cold_clients(pid, address, clients, domains)
        log(f"{who}: {clients} client(s): {result[f'warm_{clients}']['per_cpu_s']:.0f} q/CPU s")
    return result


def start_stsguard(
    procs: Processes, workdir: Path, ca_file: Path, address: str
) -> subprocess.Popen[bytes]:
    config = workdir / "stsguard.toml"
    config.write_text(
        f'[relay]\nstate_dir = "{workdir / "state"}"\nlog_format = "json"\n'
        f'[dns]\nnameservers = ["{DNS_IP}:53"]\n[tls]\nca_file = "{ca_file}"\n'
        f'[socketmap]\nlisten = "{address}"\n'
    )
    return procs.start(
        [PY, "-m", "relay.cli", "socketmap", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "socketmap.log", "wb"),
    )


def start_resolver(
    procs: Processes, workdir: Path, ca_file: Path, address: str
) -> subprocess.Popen[bytes]:
    config = workdir / "mta-sts-daemon.yml"
    listen = (
        f"path: {address}\n"
        if address.startswith("/")
        else (f"host: 127.0.0.1\nport: {RESOLVER_PORT}\nreuse_port: true\n")
    )
    config.write_text(
        f"{listen}shutdown_timeout: 1\n"
        "cache:\n  type: internal\n  options:\n    cache_size: 10000\n"
        "default_zone:\n  strict_testing: false\n  timeout: 4\n"
    )
    env = dict(os.environ, SSL_CERT_FILE=str(ca_file))
    if RESOLVER_UVLOOP:
        # mta-sts-daemon runs on uvloop whenever it can import it (its `uvloop` extra).
        env["PYTHONPATH"] = str(RESOLVER_UVLOOP)
    return procs.start(
        [str(RESOLVER_VENV / "bin" / "mta-sts-daemon"), "-c", str(config), "-v", "warn"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "mta-sts-daemon.log", "wb"),
    )


def start_floor(
    procs: Processes, workdir: Path, ca_file: Path, address: str
) -> subprocess.Popen[bytes]:
    return procs.start([PY, str(ROOT / "bench" / "socketmap_floor.py"), address])


SERVERS = (
    ("stsguard", start_stsguard, STSGUARD_PORT),
    ("resolver", start_resolver, RESOLVER_PORT),
    ("floor", start_floor, FLOOR_PORT),
)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`args.rounds` rounds; each measures every server in turn, the order reversed every
    other round (the machine's load drifts: no server always goes first)."""
    workdir = Path(args.workdir)
    enter_lab_network(workdir)
    domains = [WARM]
    for round_ in range(args.rounds):
        for who in ("stsguard", "resolver"):
            for clients in CLIENTS:
                domains += cold_domains(who, clients, args.cold, round_)
    procs = Processes()
    try:
        lab = procs.start(
            [
                PY,
                str(ROOT / "bench" / "lab_services.py"),
                *("--dns", f"{DNS_IP}:53", "--https", f"{POLICY_IP}:443"),
                *("--control", f"{DNS_IP}:{LAB_CONTROL}", "--workdir", str(workdir / "ca")),
                *("--sink-ip", SINK_IP, "--domains", ",".join(domains)),
            ],
            stdout=subprocess.PIPE,
        )
        assert lab.stdout is not None
        ready = lab.stdout.readline().decode().split()
        if not ready or ready[0] != "ready":
            raise SystemExit("bench: lab services did not start")
        ca_file = Path(ready[1])
        servers: dict[str, tuple[int, str]] = {}
        for who, start, port in SERVERS:
            address = str(workdir / f"{who}.sock") if args.unix else f"127.0.0.1:{port}"
            proc = start(procs, workdir, ca_file, address)
            if not wait_listening(address, proc):
                raise SystemExit(f"bench: {who} did not listen")
            servers[who] = (proc.pid, address)
        rounds: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            rounds.append({who: measure(*servers[who], who, round_, args) for who in order})
        return rounds
    finally:
        procs.stop_all()


def wait_listening(address: str, proc: subprocess.Popen[bytes]) -> bool:
    if not address.startswith("/"):
        host, _, port = address.rpartition(":")
        return wait_port(host, int(port), 30, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(address)
                return True
        except OSError:
            time.sleep(0.05)
    return False


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """The median, and the range when there is more than one value."""
    mid = fmt.format(statistics.median(values))
    if len(values) == 1:
        return mid
    return f"{mid} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def table(rounds: list[dict[str, Any]]) -> str:
    """Medians over the rounds (min-max); a ratio is worked out per round, then its median."""
    lines = [
        "| run | stsguard q/s | q per CPU s | resolver q/s | q per CPU s | ratio per CPU s "
        "| floor q per CPU s | floor / resolver |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in (f"{kind}_{n}" for kind in ("warm", "cold") for n in CLIENTS):
        if key not in rounds[0]["stsguard"]:
            continue

        def figures(who: str, what: str, key: str = key) -> list[float]:
            return [float(r[who][key][what]) for r in rounds]

        ours, theirs = figures("stsguard", "per_cpu_s"), figures("resolver", "per_cpu_s")
        ratio = [a / b if b else 0.0 for a, b in zip(ours, theirs, strict=True)]
        floor = ["", ""]
        if key.startswith("warm"):
            floor_cpu = figures("floor", "per_cpu_s")
            floor_ratio = [a / b if b else 0.0 for a, b in zip(floor_cpu, theirs, strict=True)]
            floor = [spread(floor_cpu), spread(floor_ratio, "{:.1f}x")]
        lines.append(
            f"| {key.replace('_', ', ')} client(s) | {spread(figures('stsguard', 'per_s'))} "
            f"| {spread(ours)} | {spread(figures('resolver', 'per_s'))} | {spread(theirs)} "
            f"| {spread(ratio, '{:.1f}x')} | {floor[0]} | {floor[1]} |"
        )
    for key in (f"cold_{n}" for n in CLIENTS):
        if key not in rounds[0]["stsguard"]:
            continue
        cells = []
        for who in ("stsguard", "resolver"):
            txt = max(r[who][key]["txt_per_domain"] for r in rounds)
            https = max(r[who][key]["https_per_domain"] for r in rounds)
            cells.append(f"{txt:.2f} / {https:.2f}")
        lines.append(f"| {key}: TXT / HTTPS per domain (max) | {cells[0]} | | {cells[1]} | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each warm run")
    parser.add_argument("--cold", type=int, default=200, help="domains per cold run (0: none)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--unix", action="store_true", help="both on Unix sockets, not TCP")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    parser.add_argument(
        "--resolver-uvloop",
        action="store_true",
        help="postfix-mta-sts-resolver on uvloop too (installed beside its venv when missing)",
    )
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: must run as root (unshare, ports 53 and 443)")
    if not (RESOLVER_VENV / "bin" / "mta-sts-daemon").exists():
        raise SystemExit(f"bench: no postfix-mta-sts-resolver in {RESOLVER_VENV}: run bench/run")
    if args.resolver_uvloop:
        global RESOLVER_UVLOOP
        RESOLVER_UVLOOP = UVLOOP_FOR_RESOLVER
        if not (UVLOOP_FOR_RESOLVER / "uvloop").exists():
            pin = f"uvloop=={uvloop.__version__}"  # the one stsguard runs on
            subprocess.run(
                [PY, "-m", "pip", "install", "-q", "--target", str(UVLOOP_FOR_RESOLVER), pin],
                check=True,
            )
    if os.environ.get(NAMESPACE_FLAG) != "1":
        import tempfile

        with tempfile.TemporaryDirectory(prefix="stsguard-smbench.") as workdir:
            os.chmod(workdir, 0o755)
            run_args = [*sys.argv[1:], "--workdir", workdir]
            env = dict(os.environ, **{NAMESPACE_FLAG: "1"})
            command = ["unshare", "--net", "--mount", "--propagation", "private", "--", PY]
            code = subprocess.call([*command, __file__, *run_args], env=env)
        raise SystemExit(code)
    results = run(args)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
