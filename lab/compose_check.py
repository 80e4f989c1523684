"""`lab/compose-check`: the compose lab built and run for real, every attack mode checked.

It builds the lab image once (on a local base made with debootstrap from Debian's packages when no
base image is on this machine: it never pulls from a registry), brings the lab up, and for each
attacker mode recreates the attacker in that mode and hands the relay one message per recipient
domain (enforce, testing, no policy) with the `sender` service. What came out is read from the
relay's JSON log (`delivery.attempt` lines: findings, result type) and the MX's log (one line per
message received, with its TLS state), and judged against the same table `stsguard lab` uses
(`lab/scenarios.py`). Last, it sends the day's TLS-RPT reports and checks that the collector
received one per policy domain naming the result types the attacks caused. Everything it made
(containers, the network, volumes) is removed at the end, whatever happened.

The no-policy domain shares its MX host with the others, so after the first (attack-free) mode the
relay remembers that this host speaks TLS: from then on its rows are the `no-policy-remembered-tls`
scenarios, which is what the product promises for such a host.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.attacker import AttackMode
from lab.runner import Observed, Outcome, format_verdict
from lab.scenarios import Attack, PolicySetup, Scenario, build_scenarios

LAB = Path(__file__).resolve().parent
ROOT = LAB.parent
COMPOSE_FILE = LAB / "docker-compose.yml"
IMAGE = "stsguard-lab:dev"
BASE_PACKAGES = ("python3", "python3-venv", "swaks", "unbound", "ca-certificates")
# The tag names what is in it, so a base made for an older package list is not reused.
LOCAL_BASE = (
    "stsguard-lab-base:bookworm-" + hashlib.sha256(" ".join(BASE_PACKAGES).encode()).hexdigest()[:8]
)
REGISTRY_BASE = "python:3.11-slim"
PROJECT = "stsguard-check"
RELAY_CONFIG = "/lab/relay.toml"
SERVICES = ("dns", "resolver", "policy-host", "mx", "collector", "relay", "attacker")
# The attacker's modes in its own order, the attack-free one first (see the module docstring).
MODES = tuple(Attack(mode.value) for mode in AttackMode)
DOMAINS = {
    PolicySetup.ENFORCE: "example.test",
    PolicySetup.TESTING: "testing.example.test",
    PolicySetup.NO_POLICY: "nopolicy.example.test",
    PolicySetup.DANE_EE: "dane.example.test",  # signed TLSA 3 1 1, through the resolver
}
# the domains with a _smtp._tls record
REPORTED = (PolicySetup.ENFORCE, PolicySetup.TESTING, PolicySetup.DANE_EE)
ATTEMPT_WAIT = 60.0
READY_WAIT = 60.0


# --- pure: which scenario a message is, and what the logs say about it ----------------------


def scenario_for(attack: Attack, policy: PolicySetup, *, tls_seen_before: bool) -> Scenario | None:
    """The row of the lab's table that a message to `policy`'s domain under `attack` is; None
    where the table has none (the DANE rows cover only some attacks)."""
    if policy is PolicySetup.NO_POLICY and tls_seen_before:
        policy = PolicySetup.REMEMBERED
    name = f"baseline-{policy}" if attack is Attack.NONE else f"{attack}-{policy}"
    return {s.name: s for s in build_scenarios()}.get(name)


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among the lines of a container log (`docker logs` output)."""
    found = []
    for line in text.splitlines():
        start = line.find("{")
        if start < 0:
            continue
        with contextlib.suppress(ValueError):
            value = json.loads(line[start:])
            if isinstance(value, dict):
                found.append(value)
    return found


def queue_id_of(swaks_output: str) -> str | None:
    """The relay's queue id from the 250 reply swaks printed (``queued as ID``)."""
    for line in swaks_output.splitlines():
        _, sep, rest = line.partition("queued as ")
        if sep:
            return rest.strip().split()[0] if rest.strip() else None
    return None


def observe(
    queue_id: str,
    subject: str,
    relay_log: Iterable[dict[str, Any]],
    mx_log: Iterable[dict[str, Any]],
) -> tuple[Observed, bool]:
    """What happened to one message, and whether that is settled: the MX has it, or the relay
    tried it and did not deliver it (a delivery the relay logged waits for the MX's line too)."""
    seen = Observed()
    attempted = relay_delivered = False
    for entry in relay_log:
        if entry.get("queue_id") != queue_id or entry.get("event") != "delivery.attempt":
            continue
        attempted = True
        relay_delivered |= "delivered" in str(entry.get("outcome", ""))
        for finding in entry.get("findings") or ():
            kind = str(finding.get("kind"))
            if kind not in seen.findings:
                seen.findings.append(kind)
                seen.evidence.append(f"{kind}: {finding.get('evidence', '')}")
        result_type = entry.get("result_type")
        if result_type and result_type not in seen.result_types:
            seen.result_types.append(str(result_type))
    for entry in mx_log:
        if entry.get("received") == "message" and entry.get("subject") == subject:
            seen.delivered = True
            seen.tls = bool(entry.get("tls"))
    return seen, seen.delivered or (attempted and not relay_delivered)


@dataclass(frozen=True, slots=True)
class ReportCheck:
    """One policy domain's TLS-RPT report as the collector received it."""

    domain: str
    received: bool
    result_types: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.received and not self.missing


def check_reports(
    collector_log: Iterable[dict[str, Any]], expected: dict[str, set[str]]
) -> list[ReportCheck]:
    """Per policy domain: a report arrived, naming every result type the attacks caused."""
    got: dict[str, set[str]] = {}
    for entry in collector_log:
        if entry.get("received") != "report":
            continue
        for policy in entry.get("policies") or ():
            got.setdefault(str(policy.get("policy_domain")), set()).update(
                policy.get("result_types") or ()
            )
    return [
        ReportCheck(
            domain,
            domain in got,
            tuple(sorted(got.get(domain, ()))),
            tuple(sorted(want - got.get(domain, set()))),
        )
        for domain, want in sorted(expected.items())
    ]


# --- I/O: docker and docker compose ---------------------------------------------------------


class CheckError(Exception):
    """The check could not run (no docker, a build that failed); the message says why."""


def _run(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    try:
        done = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CheckError(f"{' '.join(cmd[:3])}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise CheckError(f"{' '.join(cmd[:4])} failed: {' / '.join(tail)}")
    return done.stdout + done.stderr


def compose_cli() -> list[str] | None:
    """`docker compose` (v2) or `docker-compose` (1.29), whichever this machine has."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def docker_ready() -> str | None:
    """None when a docker engine answers, else why not (one line)."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        probe = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info: {exc}"
    if probe.returncode != 0:
        return "no docker engine answers (" + probe.stderr.strip().splitlines()[-1:][0] + ")"
    if compose_cli() is None:
        return "no docker compose CLI (neither `docker compose` nor `docker-compose`)"
    return None


def _image_exists(name: str) -> bool:
    probe = subprocess.run(
        ["docker", "image", "inspect", name], capture_output=True, timeout=60, check=False
    )
    return probe.returncode == 0


def _debian_mirror() -> str:
    """The Debian mirror this machine's apt already uses (deb822 or one-line sources)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    raise CheckError("no Debian mirror in this machine's apt sources for debootstrap")


def make_local_base(log: Any) -> str:
    """A base image from Debian's packages (python3, venv, swaks), made once and reused."""
    if _image_exists(LOCAL_BASE):
        return LOCAL_BASE
    if shutil.which("debootstrap") is None:
        raise CheckError(f"no {REGISTRY_BASE} image here and no debootstrap to make a base")
    log(f"making the local base {LOCAL_BASE} with debootstrap (about a minute)")
    with tempfile.TemporaryDirectory(prefix="stsguard-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(BASE_PACKAGES),
                "bookworm",
                str(rootfs),
                _debian_mirror(),
            ],
            timeout=1200,
        )
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        _run(["docker", "import", str(archive), LOCAL_BASE], timeout=600)
    return LOCAL_BASE


def build_image(log: Any) -> None:
    """Wheels first (so the image build needs no index), then the image on an available base."""
    wheels = LAB / "wheels"
    for old in wheels.glob("*.whl"):
        old.unlink()
    log("building wheels of stsguard and its dependencies")
    # The versions CI tested (requirements-ci.txt), so the image runs what the suite ran.
    lock = ROOT / "requirements-ci.txt"
    pins = ["-c", str(lock)] if lock.exists() else []
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", *pins, "-w", str(wheels), str(ROOT)],
        timeout=900,
    )
    base = REGISTRY_BASE if _image_exists(REGISTRY_BASE) else make_local_base(log)
    log(f"building {IMAGE} on {base}")
    _run(
        [
            "docker",
            "build",
            "-q",
            "--pull=false",
            "--build-arg",
            f"BASE={base}",
            "-t",
            IMAGE,
            "-f",
            str(LAB / "Dockerfile"),
            str(ROOT),
        ],
        timeout=900,
    )


class Lab:
    """The compose lab under its own project name, so it never touches a user's `stsguard-lab`.

    Compose starts, recreates and removes the services; reading logs, sending and running
    `stsguard` in the relay go straight to `docker` (docker-compose 1.29 takes a second to start,
    and the check polls the logs)."""

    def __init__(self, cli: list[str]) -> None:
        self.cli = cli
        self.sender = ""

    def compose(self, *args: str, attack: Attack = Attack.NONE, timeout: float = 300) -> str:
        env = {**os.environ, "ATTACK": str(attack)}
        cmd = [*self.cli, "-p", PROJECT, "-f", str(COMPOSE_FILE), *args]
        return _run(cmd, env=env, timeout=timeout)

    def container(self, service: str) -> str:
        """The id of the service's running container, found by compose's labels each time (a
        recreated service has a new one)."""
        found = _run(
            [
                "docker",
                "ps",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={PROJECT}",
                "--filter",
                f"label=com.docker.compose.service={service}",
            ],
            timeout=60,
        ).split()
        if not found:
            raise CheckError(f"the {service} service has no running container")
        return found[0]

    def recreate(self, service: str, attack: Attack) -> None:
        self.compose(
            "up", "-d", "--no-build", "--no-deps", "--force-recreate", service, attack=attack
        )

    def logs(self, service: str) -> list[dict[str, Any]]:
        return json_lines(_run(["docker", "logs", self.container(service)], timeout=60))

    def wait_ready(self, service: str) -> None:
        """Until the service printed its `ready` line (the relay: `relay.started`)."""
        deadline = time.monotonic() + READY_WAIT
        while time.monotonic() < deadline:
            if any("ready" in e or e.get("event") == "relay.started" for e in self.logs(service)):
                return
            time.sleep(0.5)
        raise CheckError(f"{service} did not get ready within {READY_WAIT:.0f} s")

    def restart(self, service: str) -> None:
        """Stop the service's container (SIGTERM: a clean stop) and start it again, then wait for
        its second ready line."""
        container = self.container(service)
        _run(["docker", "stop", "-t", "60", container], timeout=120)
        _run(["docker", "start", container], timeout=120)
        deadline = time.monotonic() + READY_WAIT
        while time.monotonic() < deadline:
            started = [e for e in self.logs(service) if e.get("event") == "relay.started"]
            if len(started) >= 2:
                return
            time.sleep(0.5)
        raise CheckError(f"{service} did not start again within {READY_WAIT:.0f} s")

    def start_sender(self) -> None:
        """One long-lived `sender` container; each message is a `docker exec` of swaks in it."""
        self.compose("run", "-d", "sender", "sleep", "3600")
        self.sender = self.container("sender")

    def send(self, rcpt: str, subject: str) -> str | None:
        out = _run(
            [
                "docker",
                "exec",
                self.sender,
                "swaks",
                "--server",
                "172.29.0.30:2525",
                "--helo",
                "sender.lab.test",
                "--from",
                "alice@sender.lab.test",
                "--to",
                rcpt,
                "--header",
                f"Subject: {subject}",
            ],
            timeout=120,
        )
        return queue_id_of(out)

    def relay_cli(self, *args: str) -> str:
        command = ["docker", "exec", self.container("relay"), "stsguard", *args]
        return _run([*command, "--config", RELAY_CONFIG], timeout=300)

    def down(self) -> None:
        if self.sender:
            with contextlib.suppress(CheckError):
                _run(["docker", "rm", "-f", self.sender], timeout=60)
        with contextlib.suppress(CheckError):
            self.compose("--profile", "tools", "down", "-v", "--remove-orphans", timeout=180)


@contextlib.contextmanager
def lab_up(cli: list[str]) -> Iterator[Lab]:
    lab = Lab(cli)
    lab.down()  # what an interrupted run left
    try:
        lab.compose("up", "-d", "--no-build", *SERVICES)
        for service in ("dns", "resolver", "policy-host", "mx", "collector", "attacker", "relay"):
            lab.wait_ready(service)
        lab.start_sender()
        yield lab
    finally:
        lab.down()


def run_checks(lab: Lab, log: Any) -> tuple[list[Outcome], list[ReportCheck]]:
    outcomes: list[Outcome] = []
    caused: dict[str, set[str]] = {DOMAINS[p]: set() for p in REPORTED}
    for index, attack in enumerate(MODES):
        if attack is not Attack.NONE:
            lab.recreate("attacker", attack)
            lab.wait_ready("attacker")
        log(f"attack {attack}")
        sent: list[tuple[Scenario, str, str, PolicySetup]] = []
        for policy, domain in DOMAINS.items():
            scenario = scenario_for(attack, policy, tls_seen_before=index > 0)
            if scenario is None:
                continue
            subject = f"compose-check {scenario.name}"
            queue_id = lab.send(f"bob@{domain}", subject)
            if queue_id is None:
                raise CheckError(f"the relay did not queue the message for {scenario.name}")
            sent.append((scenario, queue_id, subject, policy))
        for scenario, queue_id, subject, policy in sent:
            deadline = time.monotonic() + ATTEMPT_WAIT
            while True:
                seen, settled = observe(queue_id, subject, lab.logs("relay"), lab.logs("mx"))
                if settled or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if not seen.delivered:
                seen.note = "not delivered"
                with contextlib.suppress(CheckError):
                    lab.relay_cli("queue", "delete", queue_id)  # no retry under the next mode
            outcomes.append(Outcome(scenario, seen))
            if policy in REPORTED:
                caused[DOMAINS[policy]].update(seen.result_types)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    # The relay counts sessions in memory and writes them every few seconds; a stop writes them
    # all, so the last attack's sessions are in the state before `tlsrpt send` reads it.
    log("restarting the relay (its TLS-RPT counts are written at stop)")
    lab.restart("relay")
    log("sending today's TLS-RPT reports to the collector")
    try:
        lab.relay_cli("tlsrpt", "send", "--date", today, *_force(lab))
    except CheckError as exc:
        log(f"tlsrpt send: {exc}")  # the report checks below then say what did not arrive
    deadline = time.monotonic() + ATTEMPT_WAIT
    while True:
        reports = check_reports(lab.logs("collector"), caused)
        if all(r.ok for r in reports) or time.monotonic() > deadline:
            return outcomes, reports
        time.sleep(0.5)


def _force(lab: Lab) -> list[str]:
    """`--force` where `tlsrpt send` refuses an unfinished day without it."""
    helptext = _run(["docker", "exec", lab.container("relay"), "stsguard", "tlsrpt", "--help"])
    return ["--force"] if "--force" in helptext else []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab/compose-check", description=__doc__.split("\n")[0])
    parser.add_argument("--no-build", action="store_true", help=f"use the {IMAGE} image as it is")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:5.0f}s] {text}", file=sys.stderr, flush=True)

    why = docker_ready()
    if why is not None:
        print(f"compose-check: skipped: {why}")
        return 0
    cli = compose_cli()
    assert cli is not None
    # One check at a time on a machine: the lab's network has fixed addresses.
    lock = (Path(tempfile.gettempdir()) / "stsguard-compose-check.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        if not (args.no_build and _image_exists(IMAGE)):
            build_image(log)
        with lab_up(cli) as lab:
            outcomes, reports = run_checks(lab, log)
    except CheckError as exc:
        print(f"compose-check: error: {exc}")
        return 1
    print(format_verdict(outcomes))
    wrong = [o for o in outcomes if not o.ok]
    print("\nTLS-RPT reports the collector received:")
    for r in reports:
        state = "ok" if r.ok else "WRONG"
        missing = f" (missing: {', '.join(r.missing)})" if r.missing else ""
        print(f"  {state} {r.domain}: {', '.join(r.result_types) or '-'}{missing}")
    print(f"\ncompose-check took {time.monotonic() - started:.0f} s")
    return 0 if not wrong and all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
