"""`stsguard socketmap` next to postfix-mta-sts-resolver, as Postfix's smtp_tls_policy_maps.

    sudo .venv/bin/python bench/socketmap_compare.py [--seconds 3] [--cold 200] [--json FILE]

Loopback only: the script runs itself again under ``unshare --net --mount`` (as `bench/run`
does), where the only interface is loopback and /etc/resolv.conf names the lab DNS; the lab DNS
and policy host run in a process of their own (`bench/lab_services.py`). Both map servers answer
``postfix DOMAIN`` requests over TCP: warm (one domain asked again and again) and cold (every
query a domain neither has seen, each with its own TXT record and policy), from 1 and from 8
concurrent client connections. Figures: queries per wall second, and queries per CPU second of
the server's process (user + system, from /proc); for cold runs also the TXT queries and policy
fetches per domain counted at the lab servers. postfix-mta-sts-resolver is the version `bench/run`
installs (its venv in ~/.cache/stsguard-bench).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import procstat
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
WARM = "bench.test"
CLIENTS = (1, 8)
RESOLVER_VENV = Path.home() / ".cache" / "stsguard-bench" / "resolver-venv-1.5.1"
NAMESPACE_FLAG = "STSGUARD_SOCKETMAP_BENCH_NS"


def cold_domains(who: str, clients: int, count: int) -> list[str]:
    return [f"c{i}.{who}{clients}.test" for i in range(count)]


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


def measure(pid: int, address: str, who: str, args: argparse.Namespace) -> dict[str, Any]:
    asyncio.run(warm_run(address, 1, 0.2))  # the warm domain in the cache
    result: dict[str, Any] = {}
    for clients in CLIENTS:
        cpu0, t0 = procstat.tree_cpu(pid), time.monotonic()
        done, reply = asyncio.run(warm_run(address, clients, args.seconds))
        wall, cpu = time.monotonic() - t0, procstat.tree_cpu(pid) - cpu0
        result[f"warm_{clients}"] = {
            "queries": done,
            "per_s": done / wall,
            "per_cpu_s": done / cpu if cpu else 0.0,
            "reply": reply.decode(),
        }
        domains = cold_domains(who, clients, args.cold)
        cpu0, t0 = procstat.tree_cpu(pid), time.monotonic()
        replies = asyncio.run(cold_run(address, clients, domains))
        wall, cpu = time.monotonic() - t0, procstat.tree_cpu(pid) - cpu0
        txt = sum(int(ask(DNS_IP, LAB_CONTROL, f"TXT {d}")) for d in domains)
        https = sum(int(ask(DNS_IP, LAB_CONTROL, f"HTTPS {d}")) for d in domains)
        result[f"cold_{clients}"] = {
            "queries": len(replies),
            "per_s": len(replies) / wall,
            "per_cpu_s": len(replies) / cpu if cpu else 0.0,
            "secure_replies": sum(r.startswith(b"OK secure") for r in replies),
            "txt_per_domain": txt / len(domains),
            "https_per_domain": https / len(domains),
        }
        log(f"{who}: {clients} client(s): {result[f'warm_{clients}']['per_s']:.0f} warm q/s")
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
    return procs.start(
        [str(RESOLVER_VENV / "bin" / "mta-sts-daemon"), "-c", str(config), "-v", "warn"],
        env=dict(os.environ, SSL_CERT_FILE=str(ca_file)),
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "mta-sts-daemon.log", "wb"),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir)
    enter_lab_network(workdir)
    domains = [WARM]
    for who in ("stsguard", "resolver"):
        for clients in CLIENTS:
            domains += cold_domains(who, clients, args.cold)
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
        results: dict[str, Any] = {}
        for who, start, tcp in (
            ("stsguard", start_stsguard, f"127.0.0.1:{STSGUARD_PORT}"),
            ("resolver", start_resolver, f"127.0.0.1:{RESOLVER_PORT}"),
        ):
            address = str(workdir / f"{who}.sock") if args.unix else tcp
            proc = start(procs, workdir, ca_file, address)
            if not wait_listening(address, proc):
                raise SystemExit(f"bench: {who} did not listen")
            results[who] = measure(proc.pid, address, who, args)
            proc.terminate()
            proc.wait(20)
        return results
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


def table(results: dict[str, Any]) -> str:
    ours, theirs = results["stsguard"], results["resolver"]
    lines = [
        "| run | stsguard q/s | q per CPU s | resolver q/s | q per CPU s | ratio per CPU s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key in (f"{kind}_{n}" for kind in ("warm", "cold") for n in CLIENTS):
        a, b = ours[key], theirs[key]
        ratio = a["per_cpu_s"] / b["per_cpu_s"] if b["per_cpu_s"] else 0.0
        lines.append(
            f"| {key.replace('_', ', ')} client(s) | {a['per_s']:.0f} | {a['per_cpu_s']:.0f} "
            f"| {b['per_s']:.0f} | {b['per_cpu_s']:.0f} | {ratio:.1f}x |"
        )
    for key in (f"cold_{n}" for n in CLIENTS):
        a, b = ours[key], theirs[key]
        lines.append(
            f"| {key}: TXT / HTTPS per domain | {a['txt_per_domain']:.2f} / "
            f"{a['https_per_domain']:.2f} | | {b['txt_per_domain']:.2f} / "
            f"{b['https_per_domain']:.2f} | | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each warm run")
    parser.add_argument("--cold", type=int, default=200, help="domains per cold run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--unix", action="store_true", help="both on Unix sockets, not TCP")
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: must run as root (unshare, ports 53 and 443)")
    if not (RESOLVER_VENV / "bin" / "mta-sts-daemon").exists():
        raise SystemExit(f"bench: no postfix-mta-sts-resolver in {RESOLVER_VENV}: run bench/run")
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
