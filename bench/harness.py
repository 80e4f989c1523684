"""The benchmark run behind `bench/run`: stsguard next to Postfix and postfix-mta-sts-resolver.

It expects to run as root inside a private network and mount namespace (`bench/run` starts it
with `unshare --net --mount`): loopback is the only interface there, so nothing it starts can
reach any other address, and /etc/resolv.conf can point at the lab DNS server without touching
the machine's own. See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import procstat
import structlog
from compare import Contender, LatencyProbe, example_config, latencies_ms, set_keys
from postfix_smarthost import PostfixSmarthost

from lab.postgres import PgCluster

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

DNS_IP = "127.0.0.53"  # port 53: the address /etc/resolv.conf names inside the namespace
POLICY_IP = "127.0.0.21"  # port 443: postfix-mta-sts-resolver always fetches from 443
SINK_IP, SINK_PORT, SINK_CONTROL = "127.0.0.20", 2526, 2599
LAB_CONTROL = 5399
RELAY_PORT = 2525  # stsguard on 127.0.0.1
VS_PORT = 2528  # --vs REV: the relay of that commit on 127.0.0.1
POSTFIX_PORT = 2527  # the Postfix smarthost on 127.0.0.1
RESOLVER_PORT = 8461  # postfix-mta-sts-resolver's socketmap on 127.0.0.1
WARM, COLD, COLD_RESOLVER = "bench.test", "cold.bench.test", "cold2.bench.test"
DANE_DOMAIN = "dane.bench.test"  # MX dane-sink.bench.test with a signed TLSA for the sink
UNBOUND_IP = "127.0.0.54"  # the validating resolver in front of the lab DNS (DANE rows)
POLICY_VARIANTS = (
    "sqlite",
    "postgresql",
    "memory",
    "sqlite+dnscache",
    "memory+dnscache",
    "sqlite+memo",
)
MEMO_SECONDS = 5.0
PG_STATS_SETTLE = 2.0  # PostgreSQL's statistics lag up to a second behind
STALL_SECONDS = 30.0  # a throughput run fails when the sink gets nothing for this long
SENDER = "bench@sender.test"


@dataclass
class Results:
    """Every figure of the run, by name; printed as the table and written as JSON."""

    extra: dict[str, Any] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------------------


class Processes:
    """Every process the run starts, ended by pid at the end (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, **kwargs)
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        time.sleep(0.05)
    return False


def ask(host: str, port: int, line: str) -> str:
    """One request line to a control port, one answer line back."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def sink_count() -> int:
    return int(ask(SINK_IP, SINK_CONTROL, "COUNT"))


def lab_count(kind: str, name: str) -> int:
    return int(ask(DNS_IP, LAB_CONTROL, f"{kind} {name}"))


# --- the network namespace ------------------------------------------------------------------


def enter_lab_network(workdir: Path) -> None:
    """Bring loopback up and point the resolver configuration at the lab DNS server."""
    if not Path("/proc/self/ns/net").exists():
        raise SystemExit("bench: /proc/self/ns/net missing")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # /proc/self/net/dev lists the interfaces of this process's network namespace.
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    interfaces = [n for line in lines if (n := line.split(":")[0].strip()) != "lo"]
    if interfaces:
        raise SystemExit(
            f"bench: refusing to run with network interfaces {interfaces}: "
            "start it through bench/run (it uses a private network namespace)"
        )
    resolv, hosts = workdir / "resolv.conf", workdir / "hosts"
    resolv.write_text(f"nameserver {DNS_IP}\noptions timeout:2 attempts:1\n")
    hosts.write_text("127.0.0.1 localhost\n")
    for src, dst in ((resolv, "/etc/resolv.conf"), (hosts, "/etc/hosts")):
        subprocess.run(["mount", "--bind", str(src), dst], check=True)


# --- load generation ------------------------------------------------------------------------


def smtp_source(port: int, messages: int, sessions: int, recipient: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "smtp-source",
            "-s",
            str(sessions),
            "-m",
            str(messages),
            "-l",
            "4096",
            "-f",
            SENDER,
            "-t",
            recipient,
            f"127.0.0.1:{port}" if port != SINK_PORT else f"{SINK_IP}:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@dataclass
class Throughput:
    messages: int
    seconds: float
    cpu: float | None
    sink_cpu: float
    latency_ms: tuple[float, float] | None = None  # p50, p99 of the probe messages

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_per_1000(self) -> float | None:
        return None if self.cpu is None else self.cpu * 1000 / self.messages


def sink_probes() -> dict[int, float]:
    pairs = (item.split(":") for item in ask(SINK_IP, SINK_CONTROL, "PROBES").split())
    return {int(k): float(v) for k, v in pairs}


def push(
    port: int,
    messages: int,
    *,
    sessions: int = 20,
    recipient: str = f"user@{WARM}",
    cpu_of: Callable[[], float] | None = None,
    timeout: float = 240,
    domains: int = 1,
    probe: bool = False,
) -> Throughput:
    """Send `messages` through `port` with smtp-source and wait until the sink has them all.

    `domains` > 1: that many smtp-source processes, each with its share of the sessions and
    messages, to ``d1.``, ``d2.``, ... of `recipient`'s domain. `probe`: the latency probe runs
    beside the load (bench/compare.py)."""
    base = sink_count()
    sink_cpu0 = float(ask(SINK_IP, SINK_CONTROL, "CPU"))
    cpu0 = cpu_of() if cpu_of else None
    sink_probes()
    start = time.monotonic()
    local, _, domain = recipient.partition("@")
    if domains == 1:
        sources = [smtp_source(port, messages, sessions, recipient)]
    else:
        share = messages // domains
        sources = [
            smtp_source(port, share, max(1, sessions // domains), f"{local}@d{i}.{domain}")
            for i in range(1, domains + 1)
        ]
        messages = messages // domains * domains
    prober = LatencyProbe(port, domain, SENDER) if probe else contextlib.nullcontext()
    deadline = start + timeout
    count, progress_at = base, start
    with prober:
        while count < base + messages:
            now = time.monotonic()
            stalled = now - progress_at > STALL_SECONDS
            if now > deadline or stalled:
                for source in sources:
                    source.kill()
                    source.wait()
                why = f"no progress for {STALL_SECONDS:.0f}s" if stalled else f"{timeout:.0f}s"
                got = count - base
                raise RuntimeError(f"only {got} of {messages} messages at the sink ({why})")
            time.sleep(0.02)
            new_count = sink_count()
            if new_count != count:
                count, progress_at = new_count, time.monotonic()
    seconds = time.monotonic() - start
    cpu = cpu_of() - cpu0 if cpu_of and cpu0 is not None else None
    for source in sources:
        _, err = source.communicate(timeout=30)
        if source.returncode != 0:
            log(f"smtp-source exited {source.returncode}: {err.decode(errors='replace')[-300:]}")
    sink_cpu = float(ask(SINK_IP, SINK_CONTROL, "CPU")) - sink_cpu0
    latency = None
    if isinstance(prober, LatencyProbe):
        arrived: dict[int, float] = {}
        settle = time.monotonic() + 10
        while time.monotonic() < settle:  # the last probes still on their way
            arrived.update(sink_probes())
            if all(n in arrived for n in prober.sent):
                break
            time.sleep(0.1)
        latency = latencies_ms(prober.sent, arrived)
    return Throughput(messages, seconds, cpu, sink_cpu, latency)


# --- policy look-ups ------------------------------------------------------------------------


def netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


async def socketmap_query(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, domain: str
) -> bytes:
    """One socketmap look-up as Postfix sends it; the reply's payload."""
    writer.write(netstring(b"postfix " + domain.encode()))
    length = await reader.readuntil(b":")
    payload = await reader.readexactly(int(length[:-1]) + 1)
    return payload[:-1]


async def rate_for(seconds: float, workers: int, one: Callable[[int], Awaitable[object]]) -> float:
    """Calls per second of `one(worker)` run back to back by `workers` tasks for `seconds`."""
    done = 0
    stop_at = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            await one(i)
            done += 1

    start = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        for i in range(workers):
            tg.create_task(worker(i))
    return done / (time.monotonic() - start)


async def resolver_rate(seconds: float, connections: int) -> tuple[float, bytes]:
    conns = [await asyncio.open_connection("127.0.0.1", RESOLVER_PORT) for _ in range(connections)]
    reply = await socketmap_query(*conns[0], WARM)

    async def one(i: int) -> None:
        await socketmap_query(*conns[i], WARM)

    rate = await rate_for(seconds, connections, one)
    for _, w in conns:
        w.close()
    return rate, reply


async def resolver_cold_burst(n: int) -> list[bytes]:
    async def one() -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", RESOLVER_PORT)
        try:
            return await socketmap_query(r, w, COLD_RESOLVER)
        finally:
            w.close()

    return list(await asyncio.gather(*(one() for _ in range(n))))


@dataclass(frozen=True)
class PolicyRun:
    """One PolicyService measurement: calls per wall second, per CPU second of this process."""

    gets_per_s: float
    gets_per_cpu_s: float
    txt_queries: int
    info: str
    db_transactions: int | None = None  # PostgreSQL variant: transactions during the warm run


async def stsguard_policy_rate(
    seconds: float,
    workers: int,
    variant: str,
    workdir: Path,
    ca_file: Path,
    pg: tuple[PgCluster, str] | None = None,
) -> PolicyRun:
    """PolicyService.get on a warm cache, in this process, built the way the relay builds it.

    `variant`: ``sqlite`` (the relay's store), ``postgresql`` (the fleet's shared store, behind
    the relay's memory front; `pg` is its cluster and database URL), ``memory``, ``+dnscache``
    (the same resolver with dnspython's TTL-honouring LRU cache), ``+memo`` (a bench-only
    prototype of the change the profile points at: the last answer per domain reused for
    `MEMO_SECONDS`).
    """
    import dns.resolver

    from mtasts.cache import MemoryPolicyStore
    from mtasts.service import PolicyService
    from relay.config import Config, DnsConfig
    from relay.resolver import make_resolver
    from relay.state.stores import open_state
    from relay.state_url import parse_state_url
    from relay.tls import client_context

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    store: Any
    relay_like = variant.startswith(("sqlite", "postgresql"))
    if variant == "postgresql":
        assert pg is not None
        store = open_state(parse_state_url(pg[1], Path())).policies
    elif variant.startswith("sqlite"):
        path = workdir / f"policy-{time.monotonic_ns()}.sqlite3"
        store = open_state(parse_state_url("", path)).policies
    else:
        store = MemoryPolicyStore()
    resolver = make_resolver(DnsConfig(nameservers=(f"{DNS_IP}:53",)))
    if variant.endswith("+dnscache"):
        resolver.cache = dns.resolver.LRUCache()
    # `answer_ttl` as the relay sets it by default (`[mtasts].answer_ttl`); the `+memo` variant
    # (the bench prototype that led to it) keeps its own memo on top.
    service = PolicyService(
        store,
        resolver,
        client_context(str(ca_file)),
        https_port=443,
        answer_ttl=Config().mtasts.answer_ttl if relay_like else 0,
    )
    first = await service.get(WARM)
    if first.policy is None:
        raise RuntimeError(f"stsguard found no policy for {WARM}: {first}")

    memo: dict[str, tuple[float, object]] = {}

    async def one(_: int) -> None:
        await service.get(WARM)

    async def one_memo(_: int) -> None:
        now = time.monotonic()
        hit = memo.get(WARM)
        if hit is None or now - hit[0] > MEMO_SECONDS:
            memo[WARM] = (now, await service.get(WARM))

    if pg is not None:
        await asyncio.sleep(PG_STATS_SETTLE)
        xact0 = pg[0].transactions(pg[1])
    txt0 = lab_count("TXT", WARM)
    cpu0 = time.process_time()
    wall0 = time.monotonic()
    rate = await rate_for(seconds, workers, one_memo if variant.endswith("+memo") else one)
    cpu = time.process_time() - cpu0
    calls = rate * (time.monotonic() - wall0)
    txt = lab_count("TXT", WARM) - txt0
    xacts = None
    if pg is not None:
        await asyncio.sleep(PG_STATS_SETTLE)
        xacts = pg[0].transactions(pg[1]) - xact0 - 1  # less the reading of xact0
    return PolicyRun(
        rate,
        calls / cpu if cpu else 0.0,
        txt,
        f"{first.policy.mode} mx={list(first.policy.mx)} hits={service.hits}",
        xacts,
    )


async def dane_decision_rate(seconds: float, workers: int, nameserver: str) -> tuple[float, float]:
    """DANE decisions for one MX host with its TLSA in the resolver's cache, as delivery makes
    them (`lookup_tlsa` + `decision.dane_for_mx`): per wall second and per CPU second."""
    from relay.config import DnsConfig
    from relay.decision import dane_for_mx
    from relay.delivery.dane_lookup import TlsaStatus, lookup_tlsa
    from relay.delivery.mx import lookup_mx
    from relay.resolver import make_resolver
    from relay.tls_rules import effective_policy

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    resolver = make_resolver(DnsConfig(nameservers=(nameserver,)))
    host = (await lookup_mx(DANE_DOMAIN, resolver)).hosts[0]
    first = await lookup_tlsa(resolver, host)
    if first.status is not TlsaStatus.SECURE:
        raise RuntimeError(f"no secure TLSA for {host.name}: {first}")
    base = effective_policy(None)

    async def one(_: int) -> None:
        tlsa = await lookup_tlsa(resolver, host)
        dane_for_mx(base, tlsa.status, tlsa.records, tlsa.names, last_mx=True)

    cpu0, wall0 = time.process_time(), time.monotonic()
    rate = await rate_for(seconds, workers, one)
    cpu = time.process_time() - cpu0
    return rate, rate * (time.monotonic() - wall0) / cpu if cpu else 0.0


async def idle_sessions(port: int, n: int) -> list[asyncio.StreamWriter]:
    """Open `n` SMTP sessions and read each banner; they stay open until the writers close."""
    writers = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(r.readline(), 10)
        writers.append(w)
    return writers


# --- the runs -------------------------------------------------------------------------------


RELAY_TOML = """\
[relay]
listen = "127.0.0.1:{port}"
hostname = "relay.bench.test"
accept_networks = ["127.0.0.0/8"]
state_dir = "{state}"
log_level = "{log_level}"
intake_processes = {intake_processes}
# The bench's clients all come from 127.0.0.1 (1000 idle sessions, a burst of 500): the default
# per-address and total caps (50, 300) would refuse most of them.
max_connections = 4000
max_connections_per_ip = 4000

[delivery]
port = {sink_port}
concurrency_per_destination = 20

[dns]
nameservers = ["{dns}:53"]

[tls]
ca_file = "{ca}"

[mtasts]
https_port = 443
"""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir: Path = args.workdir
        self.procs = Processes()
        self.results = Results()
        self.ca_file = Path()
        self.unbound: str | None = None
        self.postfix: PostfixSmarthost | None = None
        self.profiles: list[Path] = []
        self.pg: PgCluster | None = None

    def postgres(self) -> tuple[PgCluster, str]:
        """A private PostgreSQL (started on first use) and a fresh database in it."""
        if self.pg is None:
            cluster, why = PgCluster.find()
            if cluster is None:
                raise RuntimeError(f"no PostgreSQL: {why}")
            self.pg = cluster
            cluster.init()
            cluster.start()
        return self.pg, self.pg.new_database()

    # set-up
    def start_lab(self) -> None:
        lab = self.procs.start(
            [
                PY,
                str(ROOT / "bench" / "lab_services.py"),
                "--dns",
                f"{DNS_IP}:53",
                "--https",
                f"{POLICY_IP}:443",
                "--control",
                f"{DNS_IP}:{LAB_CONTROL}",
                "--workdir",
                str(self.workdir / "ca"),
                "--sink-ip",
                SINK_IP,
                "--domains",
                ",".join((WARM, COLD, COLD_RESOLVER, *(f"d{i}.{WARM}" for i in range(1, 21)))),
                *("--unbound", UNBOUND_IP, "--dane-domain", DANE_DOMAIN),
            ],
            stdout=subprocess.PIPE,
        )
        assert lab.stdout is not None
        line = lab.stdout.readline().decode().split()
        if not line or line[0] != "ready":
            raise RuntimeError("lab services did not start")
        self.ca_file = Path(line[1])
        self.unbound = line[2] if len(line) > 2 and line[2] != "-" else None
        sink = self.procs.start(
            [
                PY,
                str(ROOT / "bench" / "sink.py"),
                "--listen",
                f"{SINK_IP}:{SINK_PORT}",
                "--control",
                f"{SINK_IP}:{SINK_CONTROL}",
                "--cert",
                str(self.workdir / "ca" / "sink.crt"),
                "--key",
                str(self.workdir / "ca" / "sink.key"),
                *(["--no-pipelining"] if self.args.sink_no_pipelining else []),
            ],
            stdout=subprocess.DEVNULL,
        )
        if not wait_port(SINK_IP, SINK_CONTROL, 10, sink):
            raise RuntimeError("sink did not start")

    def push_median(
        self,
        name: str,
        port: int,
        cpu_of: Callable[[], float] | None = None,
        recipient: str = f"user@{WARM}",
    ) -> Throughput:
        """`--repeat` runs of `--messages` messages; the run with the median rate."""
        runs = []
        for i in range(self.args.repeat):
            t = push(port, self.args.messages, cpu_of=cpu_of, recipient=recipient)
            log(
                f"{name}: run {i + 1}: {t.rate:.0f} msg/s, "
                f"sink {t.sink_cpu * 1000 / t.messages:.2f} CPU s per 1000"
            )
            runs.append(t)
        runs.sort(key=lambda t: t.rate)
        self.results.extra[f"{name}_all_runs"] = [t.rate for t in runs]
        self.results.extra[f"{name}_sink_cpu_per_1000"] = [
            t.sink_cpu * 1000 / t.messages for t in runs
        ]
        return runs[len(runs) // 2]

    # the relay's configuration
    def relay_toml(
        self,
        port: int,
        state: Path,
        command: list[str],
        extra: dict[tuple[str, str], str] | None = None,
        nameserver: str = f"{DNS_IP}:53",
        cwd: Path | None = None,
    ) -> str:
        """`--config default`: the relay's own `example-config`, only the addresses changed (and
        `extra`); `--config bench`: the bench's tuned file (`RELAY_TOML`)."""
        if self.args.config == "bench":
            text = RELAY_TOML.format(
                port=port,
                state=state,
                sink_port=SINK_PORT,
                dns=DNS_IP,
                ca=self.ca_file,
                log_level="info" if self.args.keep_logs else "warning",
                intake_processes=self.args.intake_processes,
            )
            return text.replace(f'"{DNS_IP}:53"', f'"{nameserver}"')
        values = {
            ("relay", "listen"): f'"127.0.0.1:{port}"',
            ("relay", "hostname"): '"relay.bench.test"',
            ("relay", "state_dir"): f'"{state}"',
            ("delivery", "port"): str(SINK_PORT),
            ("dns", "nameservers"): f'["{nameserver}"]',
            ("tls", "ca_file"): f'"{self.ca_file}"',
            ("mtasts", "https_port"): "443",
            **(extra or {}),
        }
        return set_keys(example_config(command, cwd), values)

    def relay_command(self, vs: bool = False) -> list[str]:
        if vs:
            main = "import sys; from relay.cli import main; sys.exit(main())"
            return ["env", f"PYTHONPATH={self.args.vs_tree}", PY, "-c", main, "relay"]
        return self.args.relay_command or [str(Path(PY).parent / "stsguard"), "relay"]

    @contextlib.contextmanager
    def relay_contender(
        self,
        name: str,
        port: int,
        vs: bool = False,
        extra: dict[tuple[str, str], str] | None = None,
    ) -> Iterator[Contender]:
        """A relay up for the whole comparison: `--config`'s file, its log in the work dir."""
        command = self.relay_command(vs)
        state = self.workdir / f"{name}-state"
        cfg = self.workdir / f"{name}.toml"
        changed: dict[tuple[str, str], str] = dict(extra or {})
        for item in [] if vs else self.args.set:
            key, _, value = item.partition("=")
            section, _, option = key.partition(".")
            changed[(section, option)] = value
        cwd = self.args.vs_tree if vs else None
        cfg.write_text(self.relay_toml(port, state, command, changed, cwd=cwd))
        relay_log = self.workdir / f"{name}.log"
        # Started in the other commit's tree: `python -m` (the intake processes) looks there first.
        proc = self.procs.start(
            [*command, "--config", str(cfg)],
            stdout=open(relay_log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            cwd=self.args.vs_tree if vs else None,
        )
        try:
            if not wait_port("127.0.0.1", port, 30, proc):
                tail = relay_log.read_text(errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(f"{name} did not start: {' '.join(tail)[-300:]}")
            pid = proc.pid
            config = self.args.config + "".join(
                f", {item}" for item in ([] if vs else self.args.set)
            )
            yield Contender(name, port, lambda: procstat.tree_cpu(pid), config, pid)
        finally:
            self.procs.stop(proc, timeout=10)
            if self.args.keep_logs:
                shutil.copyfile(relay_log, self.args.keep_logs / relay_log.name)

    @contextlib.contextmanager
    def postfix_contender(self) -> Iterator[Contender]:
        pf = PostfixSmarthost(
            self.workdir / "postfix",
            f"127.0.0.1:{POSTFIX_PORT}",
            SINK_IP,
            SINK_PORT,
            "sink.bench.test",
            self.ca_file,
        )
        self.postfix = pf
        pf.write()
        pf.start()
        try:
            if not wait_port("127.0.0.1", POSTFIX_PORT, 20, None):
                raise RuntimeError("postfix did not listen:\n" + pf.log_tail())
            master = pf.master_pid()
            assert master is not None
            cpu = lambda: procstat.tree_cpu(master)  # noqa: E731
            yield Contender("postfix", POSTFIX_PORT, cpu, "Postfix 3.7, connection reuse", master)
            self.results.extra["postfix_rss_kib_sum"] = procstat.tree_rss_kib(master)
        finally:
            pf.stop()
            self.postfix = None

    # the comparison: Postfix, stsguard (and --vs REV) alternating
    def run_compare(self, with_postfix: bool, with_relay: bool) -> None:
        """The alternating comparison; with `--scale`, then the scale runs on fresh relays."""
        with contextlib.ExitStack() as stack:
            who = self.contenders(stack, with_postfix, with_relay)
            relay = next((c for c in who if c.name == "stsguard"), None)
            profiler = None
            if relay is not None:
                profiler = self.start_profiler(relay.pid, "relay")
            try:
                self.alternate(who, "", sessions=20, domains=1, probe=True)
            finally:
                self.stop_profiler(profiler)
        for c in who:
            self.results.extra[c.name] = c.as_dict() | {"cpu_per_1000": c.cpu_ms.median}
        if not self.args.scale:
            return
        # 80 sessions from 127.0.0.1 are over the default max_connections_per_ip (50, meant for
        # one client address); four upstream MTAs would come from four. The scale runs raise it.
        with contextlib.ExitStack() as stack:
            caps = {("relay", "max_connections_per_ip"): "200"}
            who = self.contenders(stack, with_postfix, with_relay, caps)
            for sessions, domains in ((40, 1), (80, 1), (20, 20)):
                try:
                    self.alternate(who, f"s{sessions}d{domains}", sessions, domains)
                except RuntimeError as exc:
                    log(f"scale s{sessions}d{domains}: {exc}")
                    self.results.extra[f"scale_s{sessions}d{domains}_error"] = str(exc)

    def contenders(
        self,
        stack: contextlib.ExitStack,
        with_postfix: bool,
        with_relay: bool,
        extra: dict[tuple[str, str], str] | None = None,
    ) -> list[Contender]:
        """Postfix, the working tree's relay and the `--vs` relay, started and warmed up."""
        who: list[Contender] = []
        if with_postfix:
            log("postfix: writing and starting its own instance")
            who.append(stack.enter_context(self.postfix_contender()))
        if with_relay:
            who.append(
                stack.enter_context(self.relay_contender("stsguard", RELAY_PORT, extra=extra))
            )
        if self.args.vs:
            who.append(
                stack.enter_context(self.relay_contender("vs", VS_PORT, vs=True, extra=extra))
            )
        for c in who:
            push(c.port, 200)  # warm-up: processes spawned, policy cached, TLS sessions
        return who

    def alternate(
        self, who: list[Contender], label: str, sessions: int, domains: int, probe: bool = False
    ) -> None:
        """`--repeat` rounds, each one run per contender in turn."""
        figures = {c.name: Contender(c.name, c.port, c.cpu) for c in who}
        for i in range(self.args.repeat):
            for c in who:
                t = push(
                    c.port,
                    self.args.messages,
                    sessions=sessions,
                    cpu_of=c.cpu,
                    domains=domains,
                    probe=probe,
                )
                f = c if not label else figures[c.name]
                f.rate.runs.append(t.rate)
                f.cpu_ms.runs.append(t.cpu_per_1000 or 0.0)
                if t.latency_ms is not None:
                    f.p50_ms.runs.append(t.latency_ms[0])
                    f.p99_ms.runs.append(t.latency_ms[1])
                lat = (
                    ""
                    if t.latency_ms is None
                    else (f", latency p50 {t.latency_ms[0]:.0f} ms p99 {t.latency_ms[1]:.0f} ms")
                )
                log(
                    f"{c.name} {label or 's20d1'} run {i + 1}: {t.rate:.0f} msg/s, "
                    f"{t.cpu_per_1000:.2f} CPU ms/msg{lat}, sink "
                    f"{t.sink_cpu * 1000 / t.messages:.2f} CPU ms/msg"
                )
        if label:
            for name, f in figures.items():
                self.results.extra.setdefault("scale", {})[f"{name}_{label}"] = f.as_dict()

    # 1. the ceiling
    def run_ceiling(self) -> None:
        log(f"ceiling: {self.args.messages} messages straight into the sink")
        push(SINK_PORT, 200)
        t = self.push_median("ceiling", SINK_PORT)
        self.results.extra["ceiling_msgs_per_s"] = t.rate

    # 3. postfix-mta-sts-resolver
    def run_resolver(self) -> None:
        venv = self.args.resolver_venv
        daemon = venv / "bin" / "mta-sts-daemon"
        if not daemon.exists():
            self.results.extra["resolver_error"] = f"{daemon} missing"
            return
        cfg = self.workdir / "mta-sts-daemon.yml"
        cfg.write_text(
            f"host: 127.0.0.1\nport: {RESOLVER_PORT}\nreuse_port: true\nshutdown_timeout: 1\n"
            "cache:\n  type: internal\n  options:\n    cache_size: 10000\n"
            "default_zone:\n  strict_testing: false\n  timeout: 4\n"
        )
        env = dict(os.environ, SSL_CERT_FILE=str(self.ca_file))
        proc = self.procs.start(
            [str(daemon), "-c", str(cfg), "-v", "warn"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "mta-sts-daemon.log", "wb"),  # noqa: SIM115
        )
        try:
            if not wait_port("127.0.0.1", RESOLVER_PORT, 20, proc):
                raise RuntimeError("mta-sts-daemon did not listen")
            log("postfix-mta-sts-resolver: warm look-ups")
            asyncio.run(resolver_rate(0.2, 1))  # warm the cache
            txt0 = lab_count("TXT", WARM)
            runs = []
            for _ in range(self.args.repeat):
                cpu0 = procstat.tree_cpu(proc.pid)
                rate, reply = asyncio.run(
                    resolver_rate(self.args.policy_seconds, self.args.policy_workers)
                )
                runs.append((rate, procstat.tree_cpu(proc.pid) - cpu0))
            runs.sort()
            rate, cpu = runs[len(runs) // 2]
            self.results.extra["resolver_all_runs"] = [r for r, _ in runs]
            if not reply.startswith(b"OK secure match=sink.bench.test"):
                raise RuntimeError(f"unexpected socketmap reply {reply!r}")
            self.results.extra["resolver"] = {
                "lookups_per_s": rate,
                "lookups_per_cpu_s": rate * self.args.policy_seconds / cpu if cpu else 0.0,
                "reply": reply.decode(),
                "cpu_s": cpu,
                "txt_queries": lab_count("TXT", WARM) - txt0,
            }
            log(f"postfix-mta-sts-resolver: {rate:.0f} look-ups/s ({reply[:40]!r})")
            replies = asyncio.run(resolver_cold_burst(self.args.burst))
            time.sleep(0.2)
            self.results.extra["resolver_cold"] = {
                "txt": lab_count("TXT", COLD_RESOLVER),
                "https": lab_count("HTTPS", COLD_RESOLVER),
                "ok_replies": sum(r.startswith(b"OK") for r in replies),
            }
        finally:
            self.procs.stop(proc)

    # 4. stsguard's PolicyService in-process
    def run_policy_service(self) -> None:
        try:
            import mtasts.service  # noqa: F401
        except ImportError as exc:
            self.results.extra["policy_error"] = f"not available yet ({exc})"
            return
        for variant in POLICY_VARIANTS:
            profiler = None
            if self.args.profile:
                profiler = self.start_profiler(os.getpid(), f"policy-{variant}")
            log(f"stsguard PolicyService ({variant}): warm look-ups")
            runs = sorted(
                (
                    asyncio.run(
                        stsguard_policy_rate(
                            self.args.policy_seconds,
                            self.args.policy_workers,
                            variant,
                            self.workdir,
                            self.ca_file,
                            self.postgres() if variant == "postgresql" else None,
                        )
                    )
                    for _ in range(self.args.repeat)
                ),
                key=lambda r: r.gets_per_s,
            )
            run = runs[len(runs) // 2]
            self.results.extra[f"policy_{variant}_all_runs"] = [r.gets_per_s for r in runs]
            self.stop_profiler(profiler)
            self.results.extra[f"policy_{variant}"] = asdict(run)
            log(
                f"stsguard PolicyService ({variant}): {run.gets_per_s:.0f} gets/s, "
                f"{run.gets_per_cpu_s:.0f} per CPU s, {run.txt_queries} TXT queries ({run.info})"
                + (
                    f", {run.db_transactions} DB transactions"
                    if run.db_transactions is not None
                    else ""
                )
            )

    # 5. the stsguard relay
    def run_relay_postgres(self) -> None:
        """The relay's throughput with its state in PostgreSQL, in the same run as SQLite."""
        cluster, url = self.postgres()
        self.run_relay(postgres=(cluster, url))

    def run_relay(self, postgres: tuple[PgCluster, str] | None = None) -> None:
        if not self.args.relay_command and not (ROOT / "relay" / "app.py").exists():
            self.results.extra["relay_error"] = "not available yet (relay/app.py missing)"
            return
        suffix = "-pg" if postgres else ""
        state = self.workdir / f"stsguard{suffix}-stages"
        cfg = self.workdir / f"stsguard{suffix}.toml"
        # 1000 idle sessions and a burst of 500 all come from 127.0.0.1: the default per-address
        # and total caps (50, 300) would refuse most of them.
        extra = {
            ("relay", "max_connections"): "4000",
            ("relay", "max_connections_per_ip"): "4000",
        }
        if postgres:
            extra[("state", "url")] = f'"{postgres[1]}"'
        cfg.write_text(self.relay_toml(RELAY_PORT, state, self.relay_command(), extra))
        relay_log = self.workdir / f"stsguard{suffix}.log"
        proc = self.procs.start(
            [*self.relay_command(), "--config", str(cfg)],
            stdout=open(relay_log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        try:
            if not wait_port("127.0.0.1", RELAY_PORT, 30, proc):
                tail = relay_log.read_text(errors="replace").strip().splitlines()[-1:]
                self.results.extra["relay_error"] = f"did not start: {' '.join(tail)[-300:]}"
                return
            pid = proc.pid
            if postgres:
                self.relay_throughput_postgres(pid, *postgres)
                return
            errors = []
            peak = 0
            # Idle sessions first, on a fresh relay, so that a relay that fails under load still
            # gets its memory row; the peak is read after every stage.
            for stage in (self.relay_idle_sessions, self.relay_cold_burst):
                try:
                    stage(pid)
                except (RuntimeError, OSError) as exc:
                    log(f"stsguard: {stage.__name__} failed: {exc}")
                    errors.append(f"{stage.__name__}: {exc}")
                peak = max(peak, procstat.tree_status_kib(pid, "VmHWM"))
                if proc.poll() is not None:
                    errors.append(f"the relay exited with status {proc.returncode}")
                    break
            self.results.extra.setdefault("stsguard_memory", {})["peak_rss_kib"] = peak or None
            if errors:
                self.results.extra["relay_error"] = "; ".join(errors)
        finally:
            self.procs.stop(proc, timeout=10)
            if self.args.keep_logs:
                shutil.copyfile(relay_log, self.args.keep_logs / relay_log.name)

    # 6. DANE: decisions with the TLSA cached, and the relay behind unbound, MTA-STS beside DANE
    def run_dane(self) -> None:
        if self.unbound is None:
            self.results.extra["dane_error"] = "unbound is not installed: no DANE rows"
            return
        log("stsguard: cached DANE decisions")
        rate, per_cpu = asyncio.run(
            dane_decision_rate(self.args.policy_seconds, self.args.policy_workers, self.unbound)
        )
        log(f"stsguard: {rate:.0f} DANE decisions/s")
        self.results.extra["dane_decisions"] = {"per_s": rate, "per_cpu_s": per_cpu}
        state = self.workdir / "stsguard-dane-state"
        cfg = self.workdir / "stsguard-dane.toml"
        cfg.write_text(
            self.relay_toml(RELAY_PORT, state, self.relay_command(), nameserver=self.unbound)
        )
        proc = self.procs.start(
            [*self.relay_command(), "--config", str(cfg)],
            stdout=open(self.workdir / "stsguard-dane.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        try:
            if not wait_port("127.0.0.1", RELAY_PORT, 30, proc):
                raise RuntimeError("the relay behind unbound did not start")
            cpu = lambda: procstat.tree_cpu(proc.pid)  # noqa: E731
            for name, domain in (("stsguard_unbound_sts", WARM), ("stsguard_dane", DANE_DOMAIN)):
                push(RELAY_PORT, 200, recipient=f"user@{domain}")  # warm-up
                log(f"stsguard behind unbound: {self.args.messages} messages to {domain}")
                t = self.push_median(name, RELAY_PORT, cpu, recipient=f"user@{domain}")
                log(f"stsguard behind unbound, {domain}: {t.rate:.0f} msg/s")
                self.results.extra[name] = {"msgs_per_s": t.rate, "cpu_per_1000": t.cpu_per_1000}
        finally:
            self.procs.stop(proc, timeout=10)

    def relay_throughput_postgres(self, pid: int, cluster: PgCluster, url: str) -> None:
        push(RELAY_PORT, 200)  # warm-up: policy cached, code paths hot
        log(f"stsguard, PostgreSQL state: {self.args.messages} messages")
        time.sleep(PG_STATS_SETTLE)
        xact0 = cluster.transactions(url)
        t = self.push_median("stsguard_pg", RELAY_PORT, lambda: procstat.tree_cpu(pid))
        time.sleep(PG_STATS_SETTLE)
        xacts = cluster.transactions(url) - xact0 - 1
        per_1000 = xacts * 1000 / (t.messages * self.args.repeat)
        log(
            f"stsguard, PostgreSQL state: {t.rate:.0f} msg/s, {t.cpu_per_1000:.2f} CPU s per "
            f"1000, {per_1000:.1f} DB transactions per 1000 messages"
        )
        self.results.extra["stsguard_pg"] = {
            "msgs_per_s": t.rate,
            "cpu_per_1000": t.cpu_per_1000,
            "db_transactions_per_1000": per_1000,
        }

    def relay_cold_burst(self, pid: int) -> None:
        log(f"stsguard: cold burst of {self.args.burst} deliveries to {COLD}")
        complete = False
        try:
            push(RELAY_PORT, self.args.burst, sessions=self.args.burst, recipient=f"u@{COLD}")
            complete = True
        finally:
            # Counted even when not every message arrived (the verdict is n/a then).
            self.results.extra["stsguard_cold"] = {
                "txt": lab_count("TXT", COLD),
                "https": lab_count("HTTPS", COLD),
                "complete": complete,
            }

    def relay_idle_sessions(self, pid: int) -> None:
        log(f"stsguard: {self.args.idle} idle sessions")
        time.sleep(0.5)
        before = procstat.tree_rss_kib(pid)
        per = asyncio.run(self.measure_idle(pid, before))
        self.results.extra.setdefault("stsguard_memory", {}).update(
            rss_before_idle_kib=before, idle_session_kib=per
        )

    async def measure_idle(self, pid: int, before: int) -> float:
        writers = await idle_sessions(RELAY_PORT, self.args.idle)
        await asyncio.sleep(0.5)
        after = procstat.tree_rss_kib(pid)
        for w in writers:
            w.close()
        return (after - before) / len(writers)

    def start_profiler(self, pid: int, name: str) -> subprocess.Popen[bytes] | None:
        if not self.args.profile:
            return None
        spy = shutil.which("py-spy") or str(self.args.tools / "bin" / "py-spy")
        if not Path(spy).exists():
            log("py-spy not found; no profile")
            return None
        self.args.profile.mkdir(parents=True, exist_ok=True)
        out = self.args.profile / f"{name}.speedscope.json"
        self.profiles.append(out)
        # --nonblocking: sampling must not pause the process it measures.
        return self.procs.start(
            [
                *(spy, "record", "--nonblocking", "--subprocesses", "-p", str(pid), "-o", str(out)),
                *("-f", "speedscope", *(["--gil"] if self.args.profile_gil else [])),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_profiler(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            log(f"profile written to {self.profiles[-1]}")

    def compare_rows(self) -> list[list[str]]:
        """Throughput, CPU per message and latency: median (min-max) of the alternating runs."""
        x = self.results.extra
        sg, pf, vs = x.get("stsguard", {}), x.get("postfix", {}), x.get("vs", {})

        def spread(d: dict[str, Any], key: str, digits: int) -> str:
            runs = d.get(f"{key}_runs") or []
            if not runs:
                return "-"
            med = d[key]
            return f"{med:,.{digits}f} ({min(runs):,.{digits}f}-{max(runs):,.{digits}f})"

        def ratio(a: float | None, b: float | None) -> str:
            return "-" if a is None or not b else f"{a / b:.2f}x"

        def per_core(d: dict[str, Any]) -> str:
            runs = [1000 / r for r in d.get("cpu_ms_per_msg_runs") or [] if r]
            if not runs:
                return "-"
            return f"{statistics.median(runs):,.0f} ({min(runs):,.0f}-{max(runs):,.0f})"

        rate_ok = cpu_ok = None
        if sg.get("msgs_per_s") and pf.get("msgs_per_s"):
            rate_ok = sg["msgs_per_s"] >= 1.5 * pf["msgs_per_s"]
            cpu_ok = sg["cpu_ms_per_msg"] <= 0.8 * pf["cpu_ms_per_msg"]
        config = f"stsguard config: {sg.get('config', '-')}"
        rows = [
            [
                f"relay throughput (msg/s; {config})",
                spread(sg, "msgs_per_s", 0),
                spread(pf, "msgs_per_s", 0),
                ratio(sg.get("msgs_per_s"), pf.get("msgs_per_s")),
                ">= 1.5x Postfix",
                "n/a" if rate_ok is None else ("PASS" if rate_ok else "FAIL"),
            ],
            [
                "relay CPU ms per message (all its processes)",
                spread(sg, "cpu_ms_per_msg", 2),
                spread(pf, "cpu_ms_per_msg", 2),
                ratio(sg.get("cpu_ms_per_msg"), pf.get("cpu_ms_per_msg")),
                "<= 0.8x Postfix",
                "n/a" if cpu_ok is None else ("PASS" if cpu_ok else "FAIL"),
            ],
            [
                "  msg/s one core would deliver (1000 / CPU ms per message)",
                per_core(sg),
                per_core(pf),
                "",
                "",
                "",
            ],
            [
                "latency p50, intake 250 -> MX 250 (ms)",
                spread(sg, "latency_p50_ms", 0),
                spread(pf, "latency_p50_ms", 0),
                ratio(sg.get("latency_p50_ms"), pf.get("latency_p50_ms")),
                "(lower is better)",
                "",
            ],
            [
                "latency p99, intake 250 -> MX 250 (ms)",
                spread(sg, "latency_p99_ms", 0),
                spread(pf, "latency_p99_ms", 0),
                ratio(sg.get("latency_p99_ms"), pf.get("latency_p99_ms")),
                "(lower is better)",
                "",
            ],
        ]
        if vs:
            for key, digits in (("msgs_per_s", 0), ("cpu_ms_per_msg", 2), ("latency_p99_ms", 0)):
                rows.append(
                    [
                        f"  working tree vs {self.args.vs_tree.name}: {key}",
                        spread(sg, key, digits),
                        spread(vs, key, digits),
                        ratio(sg.get(key), vs.get(key)),
                        "(column 3: the other commit)",
                        "",
                    ]
                )
        for label, f in sorted(x.get("scale", {}).items()):
            if not label.startswith("stsguard_"):
                continue
            tag = label.removeprefix("stsguard_")
            other = x["scale"].get(f"postfix_{tag}", {})
            sessions, domains = tag[1:].split("d")
            for key, digits in (("msgs_per_s", 0), ("cpu_ms_per_msg", 2)):
                rows.append(
                    [
                        f"  scale: {sessions} sessions, {domains} domain(s): {key}",
                        spread(f, key, digits),
                        spread(other, key, digits),
                        ratio(f.get(key), other.get(key)),
                        "",
                        "",
                    ]
                )
        return rows

    # the table
    def table(self) -> str:
        x = self.results.extra
        rows: list[list[str]] = []

        def fmt(v: float | None, digits: int = 0) -> str:
            return "-" if v is None else f"{v:,.{digits}f}"

        def ratio(a: float | None, b: float | None) -> str:
            return "-" if a is None or not b else f"{a / b:.2f}x"

        def verdict(ok: bool | None) -> str:
            return "n/a" if ok is None else ("PASS" if ok else "FAIL")

        sg = x.get("stsguard", {})
        rows += self.compare_rows()
        if self.args.quick:
            return self.render(rows)
        pg = x.get("stsguard_pg", {})
        rows.append(
            [
                "relay throughput, PostgreSQL state (msg/s)",
                fmt(pg.get("msgs_per_s")),
                fmt(sg.get("msgs_per_s")),
                ratio(pg.get("msgs_per_s"), sg.get("msgs_per_s")),
                "(beside: SQLite state)",
                "",
            ]
        )
        rows.append(
            [
                "  DB transactions per 1000 messages (PostgreSQL)",
                fmt(pg.get("db_transactions_per_1000"), 1),
                "",
                "",
                "",
                "",
            ]
        )
        rows.append(
            [
                "ceiling: smtp-source -> sink (msg/s)",
                "",
                fmt(x.get("ceiling_msgs_per_s")),
                "",
                "(reference)",
                "",
            ]
        )
        rs = x.get("resolver", {})
        for variant in POLICY_VARIANTS:
            pol = x.get(f"policy_{variant}", {})
            headline = variant == "sqlite"
            rows.append(
                [
                    f"cached policy decisions/s ({variant})",
                    fmt(pol.get("gets_per_s")),
                    fmt(rs.get("lookups_per_s")),
                    ratio(pol.get("gets_per_s"), rs.get("lookups_per_s")),
                    ">= 5x resolver" if headline else "(variant)",
                    verdict(
                        None if not pol or not rs else pol["gets_per_s"] >= 5 * rs["lookups_per_s"]
                    )
                    if headline
                    else "",
                ]
            )
            rows.append(
                [
                    f"  per CPU second of the decider ({variant})",
                    fmt(pol.get("gets_per_cpu_s")),
                    fmt(rs.get("lookups_per_cpu_s")),
                    ratio(pol.get("gets_per_cpu_s"), rs.get("lookups_per_cpu_s")),
                    "",
                    "",
                ]
            )
            rows.append(
                [
                    f"  TXT queries during the warm run ({variant})",
                    fmt(pol.get("txt_queries")),
                    fmt(rs.get("txt_queries")),
                    "",
                    "",
                    "",
                ]
            )
            if pol.get("db_transactions") is not None:
                rows.append(
                    [
                        f"  DB transactions during the warm run ({variant})",
                        fmt(pol.get("db_transactions")),
                        "",
                        "",
                        "",
                        "",
                    ]
                )
        cold, rcold = x.get("stsguard_cold", {}), x.get("resolver_cold", {})
        rows.append(
            [
                f"cold burst of {self.args.burst}: TXT queries",
                fmt(cold.get("txt")) + ("" if cold.get("complete", True) else " (incomplete)"),
                fmt(rcold.get("txt")),
                "",
                "= 1",
                verdict(None if not cold.get("complete") else cold["txt"] == 1),
            ]
        )
        rows.append(
            [
                f"cold burst of {self.args.burst}: HTTPS fetches",
                fmt(cold.get("https")) + ("" if cold.get("complete", True) else " (incomplete)"),
                fmt(rcold.get("https")),
                "",
                "= 1",
                verdict(None if not cold.get("complete") else cold["https"] == 1),
            ]
        )
        mem = x.get("stsguard_memory", {})
        rows.append(
            [
                "peak RSS (MiB)",
                fmt(mem["peak_rss_kib"] / 1024, 1) if mem.get("peak_rss_kib") else "-",
                fmt(x["postfix_rss_kib_sum"] / 1024, 1) if "postfix_rss_kib_sum" in x else "-",
                ratio(mem.get("peak_rss_kib"), x.get("postfix_rss_kib_sum")),
                "(Postfix: sum over its processes)",
                "",
            ]
        )
        rows.append(
            [
                f"RSS per idle inbound session ({self.args.idle} open, KiB)",
                fmt(mem.get("idle_session_kib"), 1),
                "-",
                "",
                "<= 64 KiB",
                verdict(None if "idle_session_kib" not in mem else mem["idle_session_kib"] <= 64),
            ]
        )
        dane, sts_u, dane_t = (
            x.get("dane_decisions", {}),
            x.get("stsguard_unbound_sts", {}),
            x.get("stsguard_dane", {}),
        )
        sts_rate = x.get("policy_sqlite", {}).get("gets_per_s")
        rows.append(
            [
                "cached DANE decisions/s (TLSA in cache; ratio to the MTA-STS sqlite row)",
                fmt(dane.get("per_s")),
                fmt(sts_rate),
                ratio(dane.get("per_s"), sts_rate),
                "(beside MTA-STS)",
                "",
            ]
        )
        rows.append(
            [
                "relay behind unbound: DANE domain vs MTA-STS domain (msg/s)",
                fmt(dane_t.get("msgs_per_s")),
                fmt(sts_u.get("msgs_per_s")),
                ratio(dane_t.get("msgs_per_s"), sts_u.get("msgs_per_s")),
                "(same run)",
                "",
            ]
        )
        return self.render(rows)

    def render(self, rows: list[list[str]]) -> str:
        x = self.results.extra
        na = x.get("relay_error", "")
        head = ["measure", "stsguard", "Postfix / resolver", "ratio", "target", "verdict"]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head]]
        lines.append("-+-".join("-" * w for w in widths))
        lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        notes = []
        if na:
            notes.append(f"stsguard relay rows: {na}")
        for key in ("policy_error", "resolver_error", "dane_error"):
            if key in x:
                notes.append(f"{key}: {x[key]}")
        return "\n".join([*lines, "", *notes])


@contextlib.contextmanager
def cleanup(bench: Bench) -> Iterator[None]:
    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        if bench.postfix is not None:
            bench.postfix.stop()
        bench.procs.stop_all()
        if bench.pg is not None:
            bench.pg.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--resolver-venv", type=Path, required=True)
    parser.add_argument("--tools", type=Path, default=Path("/nonexistent"), help="py-spy venv")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; median kept")
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--policy-seconds", type=float, default=3.0)
    parser.add_argument("--policy-workers", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--keep-logs", type=Path, help="copy the relay's log into this directory")
    parser.add_argument(
        "--relay-command",
        nargs="+",
        help="run this instead of `stsguard relay` (gets --config FILE appended)",
    )
    parser.add_argument(
        "--profile", type=Path, help="directory for py-spy speedscope profiles (relay, policy)"
    )
    parser.add_argument(
        "--config",
        choices=("default", "bench"),
        default="default",
        help="the relay's configuration: its own example-config with only the addresses changed "
        "(default), or the bench's tuned file (intake processes, concurrency 20, log warning)",
    )
    parser.add_argument(
        "--intake-processes",
        type=int,
        default=1,
        help="with --config bench: the relay's [relay].intake_processes (default 1)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=TOML",
        help="with --config default: change one key of the working tree's relay (for trying a "
        "setting; the table names the config as changed)",
    )
    parser.add_argument("--scale", action="store_true", help="also 40 and 80 sessions, 20 domains")
    parser.add_argument("--quick", action="store_true", help="only the comparison, no stages")
    parser.add_argument(
        "--sink-no-pipelining",
        action="store_true",
        help="the sink does not offer PIPELINING (an MX without RFC 2920, for both relays)",
    )
    parser.add_argument(
        "--vs-tree", type=Path, help="a tree of another commit (bench/run --vs REV sets it)"
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="sample only the thread holding the GIL: where the Python CPU goes, no I/O waits",
    )
    parser.add_argument(
        "--only",
        default="ceiling,postfix,resolver,policy,relay,relay-pg,dane",
        help="comma-separated runs",
    )
    args = parser.parse_args()
    args.vs = args.vs_tree is not None
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    enter_lab_network(args.workdir)
    bench = Bench(args)
    only = set(args.only.split(","))
    started = time.monotonic()
    try:
        with cleanup(bench):
            run_all(bench, only)
    except KeyboardInterrupt:
        log("interrupted; every process it started is stopped")
        return 130
    bench.results.extra["wall_seconds"] = time.monotonic() - started
    print(bench.table())
    if args.json:
        args.json.write_text(json.dumps(bench.results.extra, indent=2, default=str))
    return 0


def run_all(bench: Bench, only: set[str]) -> None:
    """The lab, then each selected run; a failed run is noted and the next one goes on.

    ``postfix`` and ``relay`` are measured together, alternating (bench/compare.py); ``relay``
    then also starts a relay for the idle-session and cold-burst stages."""
    bench.start_lab()
    runs: list[tuple[str, Callable[[], None]]] = [
        ("ceiling", bench.run_ceiling),
        ("compare", lambda: bench.run_compare("postfix" in only, "relay" in only)),
        ("resolver", bench.run_resolver),
        ("policy", bench.run_policy_service),
        ("relay-stages", bench.run_relay),
        ("relay-pg", bench.run_relay_postgres),
        ("dane", bench.run_dane),
    ]
    selected = set(only)
    if {"postfix", "relay"} & only or bench.args.vs:
        selected.add("compare")
    if "relay" in only and not bench.args.quick:
        selected.add("relay-stages")
    for name, run in runs:
        if name in selected:
            try:
                run()
            except Exception as exc:
                log(f"{name}: failed: {exc!r}")
                bench.results.extra[f"{name}_error"] = repr(exc)


if __name__ == "__main__":
    sys.exit(main())
