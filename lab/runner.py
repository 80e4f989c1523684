"""`stsguard lab`: run every scenario on loopback and show what the relay caught.

One lab world (DNS, CA, policy host) and one relay serve all scenarios; each scenario has its own
recipient domain, its own MX host at its own 127.0.0.x address and, for on-path attacks, its own
attacker proxy in front of that MX (the lab DNS names the attacker as the MX's address). What
happened is read the way an operator reads it: from the MX (what arrived, over TLS or not), from the
relay's `delivery.attempt` log lines (findings with evidence) and from its TLS-RPT session results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import ssl
import sys
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import aiosmtplib
import structlog
import structlog.testing

from detect.prevalence import PrevalenceRow
from detect.prevalence_view import by_host
from detect.prevalence_view import format_table as format_prevalence
from lab.attacker import Attacker
from lab.mx import CertKind, LabMx
from lab.scenarios import Attack, PolicySetup, Scenario, build_scenarios
from lab.unbound import MISSING, unbound_path
from lab.world import LabWorld, wait_until
from relay.app import Relay
from relay.config import Config
from relay.errors import UsageError
from relay.reports import report_settings
from tlsrpt_emit.model import ResultSink, SessionResult
from tlsrpt_emit.render import render_json
from tlsrpt_emit.schedule import build_day_reports

SETTLE_SECONDS = 20.0
_STATUS = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")
ALL_DAYS = "0001-01-01"
PARALLEL = 8  # scenarios in flight at once: enough to be quick, few enough for 2 cores


@dataclass(slots=True)
class Observed:
    """What one scenario produced."""

    delivered: bool = False
    tls: bool | None = None
    findings: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    result_types: list[str] = field(default_factory=list)
    note: str = ""
    requiretls: bool = False  # the message reached the MX with MAIL FROM:<...> REQUIRETLS
    bounce: str | None = None  # the status code of a bounce (from `delivery.outcome`)


@dataclass(frozen=True, slots=True)
class Outcome:
    scenario: Scenario
    observed: Observed

    @property
    def finding(self) -> str | None:
        expected = self.scenario.expected.finding
        if expected in self.observed.findings:
            return expected
        return self.observed.findings[0] if self.observed.findings else None

    @property
    def result_type(self) -> str | None:
        expected = self.scenario.expected.tlsrpt_result_type
        if expected in self.observed.result_types:
            return expected
        return self.observed.result_types[0] if self.observed.result_types else None

    @property
    def ok(self) -> bool:
        want, got = self.scenario.expected, self.observed
        # RFC 8689: a REQUIRETLS message that arrived came over TLS with the parameter.
        requiretls_kept = not (self.scenario.requiretls and got.delivered) or bool(
            got.tls and got.requiretls
        )
        return (
            want.delivered == got.delivered
            and (want.tls is None or want.tls == got.tls)
            and self.finding == want.finding
            and self.result_type == want.tlsrpt_result_type
            and want.bounce == got.bounce
            and requiretls_kept
        )

    def as_json(self) -> dict[str, Any]:
        s = self.scenario
        return {
            "name": s.name,
            "attack": str(s.attack),
            "policy_mode": str(s.policy),
            "delivered": self.observed.delivered,
            "tls": self.observed.tls,
            "finding": self.finding,
            "tlsrpt_result_type": self.result_type,
            "expected_ok": self.ok,
            "requiretls": s.requiretls,
            "bounce": self.observed.bounce,
            "expected": {
                "delivered": s.expected.delivered,
                "tls": s.expected.tls,
                "finding": s.expected.finding,
                "tlsrpt_result_type": s.expected.tlsrpt_result_type,
                "bounce": s.expected.bounce,
            },
            "evidence": self.observed.evidence[:3],
            "description": s.description,
        }


class _TeeSink:
    """Counts into the relay's TLS-RPT sink and keeps each result per policy domain."""

    def __init__(self, inner: ResultSink) -> None:
        self.inner = inner
        self.by_domain: dict[str, list[SessionResult]] = defaultdict(list)

    def record(self, result: SessionResult) -> None:
        self.by_domain[result.policy_domain].append(result)
        self.inner.record(result)


@dataclass(slots=True)
class _Stage:
    """One scenario's cast: its domain, MX, optional attacker."""

    scenario: Scenario
    domain: str
    mx: LabMx
    attacker: Attacker | None = None
    rcpt: str = ""
    note: str = ""


class LabRun:
    """Sets up every scenario's domain in one world, runs them against one relay, collects."""

    def __init__(self, world: LabWorld, scenarios: Sequence[Scenario], state_dir: Path) -> None:
        self.world = world
        self.scenarios = list(scenarios)
        self.state_dir = state_dir
        self.stages: list[_Stage] = []
        self.prevalence: list[PrevalenceRow] = []  # the relay's prevalence counts after the run
        self._stack = contextlib.AsyncExitStack()
        self._next_ip = 10

    def _ip(self) -> str:
        self._next_ip += 1
        return f"127.0.1.{self._next_ip}"

    async def _stage(self, scenario: Scenario) -> _Stage:
        domain = f"{scenario.name}.lab.test"
        mx_name = f"mx.{domain}"
        cert = CertKind.EXPIRED if scenario.attack is Attack.EXPIRED_CERT else CertKind.GOOD
        if scenario.policy.dane:
            mx = await self._dane_mx(scenario, mx_name)
        else:
            mx = await self.world.add_mx(mx_name, self._ip(), cert=cert)
        # RFC 8689: the MX offers REQUIRETLS after STARTTLS unless the set-up says otherwise.
        mx.requiretls = scenario.requiretls and scenario.attack is not Attack.NO_REQUIRETLS
        stage = _Stage(scenario, domain, mx, rcpt=f"bob@{domain}")
        if scenario.attack.on_path or scenario.policy is PolicySetup.REMEMBERED:
            ip = self._ip()
            attacker = Attacker(
                (mx.host, self.world.mx_port),
                "none" if scenario.policy is PolicySetup.REMEMBERED else str(scenario.attack),
                host=ip,
                port=self.world.mx_port,
                mx_name=mx_name,
                ca=self.world.ca,
            )
            await self._stack.enter_async_context(attacker.running())
            self.world.dns.set(mx_name, "A", [ip])
            stage.attacker = attacker
        mx_hosts = [(10, mx_name)]
        if scenario.attack is Attack.SPOOFED_MX:
            spoof = f"mx.evil-{domain}"
            await self.world.add_mx(spoof, self._ip())
            mx_hosts = [(5, spoof)]
        self.world.publish_mx(domain, mx_hosts)
        if scenario.policy in (PolicySetup.ENFORCE, PolicySetup.TESTING, PolicySetup.NONE):
            self.world.publish_policy(domain, str(scenario.policy), [mx_name])
        if scenario.policy is PolicySetup.DANE_STS_TESTING:
            self.world.publish_policy(domain, "testing", [mx_name])
        return stage

    async def _dane_mx(self, scenario: Scenario, mx_name: str) -> LabMx:
        """An MX for a DANE set-up and its signed TLSA records (DANE-TA: the MX sends the CA)."""
        ip = self._ip()
        dane_ta = scenario.policy is PolicySetup.DANE_TA
        issued = self.world.ca.issue(mx_name, with_ca=dane_ta)
        mx = await self.world.serve_mx(
            LabMx(ip, hostname=mx_name, tls_context=issued.server_context())
        )
        if scenario.policy is not PolicySetup.DANE_ONLY:
            record = self.world.ca.tlsa(2, 0, 1) if dane_ta else issued.tlsa(3, 1, 1)
            self.world.publish_tlsa(mx_name, [record])
        if scenario.attack is Attack.DNSSEC_BOGUS:
            self.world.dns.break_dnssec(f"_25._tcp.{mx_name}", "TLSA")
        return mx

    @contextlib.asynccontextmanager
    async def staged(self) -> AsyncIterator[list[_Stage]]:
        """Every scenario's cast set up (torn down on exit), before any relay runs; tests drive
        other parts (the probe, a bare `Deliverer`) against the same set-ups."""
        async with self._stack:
            for scenario in self.scenarios:
                self.stages.append(await self._stage(scenario))
            yield self.stages

    def relay_config(self) -> Config:
        """The relay's config for the staged scenarios (dane-only overrides where set up)."""
        dane_only = {
            stage.domain: {"tls": "dane-only"}
            for stage in self.stages
            if stage.scenario.policy is PolicySetup.DANE_ONLY
        }
        # REQUIRETLS is offered only over STARTTLS: the relay gets a certificate.
        cert = self.world.ca.issue("relay.lab.test", "127.0.0.1")
        return self.world.relay_config(
            self.state_dir,
            relay={"tls_cert_file": str(cert.cert_file), "tls_key_file": str(cert.key_file)},
            tlsrpt={"enabled": False},
            detect={"on_downgrade": "defer"},
            domains=dane_only,
        )

    async def run(self) -> tuple[list[Outcome], list[dict[str, Any]]]:
        async with self.staged():
            config = self.relay_config()
            capture = structlog.testing.LogCapture()
            structlog.configure(
                processors=[
                    structlog.contextvars.merge_contextvars,
                    structlog.processors.format_exc_info,
                    capture,
                ]
            )
            relay = Relay(config)
            tee = _TeeSink(relay.sink)
            relay.deliverer.sink = tee
            async with relay.running():
                await self._prepare(relay)
                tee.by_domain.clear()
                capture.entries.clear()
                slots = asyncio.Semaphore(PARALLEL)

                async def one(stage: _Stage) -> None:
                    async with slots:
                        await self._play(stage, config)
                        await self._settle(stage, relay)

                await asyncio.gather(*(one(stage) for stage in self.stages))
            relay.sink.flush()
            outcomes = [self._observe(stage, capture.entries, tee) for stage in self.stages]
            reports = self._reports(relay)
            if relay.state.prevalence is not None:
                self.prevalence = relay.state.prevalence.rows(ALL_DAYS)
        return outcomes, reports

    async def _prepare(self, relay: Relay) -> None:
        """What must happen before the attack: remembered TLS, cached policies."""
        warmups = [
            s
            for s in self.stages
            if s.scenario.policy is PolicySetup.REMEMBERED
            or s.scenario.attack in (Attack.POLICY_HOST_BLOCKED, Attack.TXT_REMOVED)
        ]
        for stage in warmups:
            await _send(relay.config, stage.rcpt, "warm-up")
        for stage in warmups:
            await wait_until(_received(stage.mx), SETTLE_SECONDS)
            stage.mx.messages.clear()
            if stage.attacker is not None:
                stage.attacker.mode = str(stage.scenario.attack)  # type: ignore[assignment]
            if stage.scenario.attack is Attack.POLICY_HOST_BLOCKED:
                # A new id makes the relay fetch again; the host is down: the cached policy holds.
                self.world.dns.set(f"_mta-sts.{stage.domain}", "TXT", ["v=STSv1; id=2;"])
                self.world.policy_host.set_failure(stage.domain, "down")
            if stage.scenario.attack is Attack.TXT_REMOVED:
                self.world.dns.remove(f"_mta-sts.{stage.domain}", "TXT")
        await wait_until(lambda: not relay.spool.list(), SETTLE_SECONDS)
        # Sessions kept open for reuse would carry the next message past the attacker untouched.
        await relay.deliverer.close()

    async def _play(self, stage: _Stage, config: Config) -> None:
        if stage.scenario.attack is Attack.SMUGGLE:
            stage.note = await _smuggle(config, stage.rcpt)
            return
        if stage.scenario.requiretls:
            context = self.world.ca.client_context()
            await _send_requiretls(config, stage.rcpt, stage.scenario.name, context)
            return
        await _send(config, stage.rcpt, stage.scenario.name)

    async def _settle(self, stage: _Stage, relay: Relay) -> None:
        """Wait until the message arrived or its first delivery attempt ended."""

        def settled() -> bool:
            if stage.mx.messages:
                return True
            queued = False
            for message in relay.spool.list():
                for r in message.recipients:
                    if r.address == stage.rcpt and r.attempts >= 1:
                        stage.note = r.last_error
                        return True
                    queued = queued or r.address == stage.rcpt
            # Gone from the queue without reaching the MX: bounced (REQUIRETLS).
            return stage.scenario.attack is Attack.SMUGGLE or not queued

        with contextlib.suppress(TimeoutError):
            await wait_until(settled, SETTLE_SECONDS)

    def _observe(
        self, stage: _Stage, entries: Sequence[MutableMapping[str, Any]], tee: _TeeSink
    ) -> Outcome:
        seen = Observed()
        seen.delivered = bool(stage.mx.messages)
        if stage.mx.messages:
            seen.tls = stage.mx.messages[0].tls
            seen.requiretls = stage.mx.messages[0].requiretls
        for entry in entries:
            if (
                entry.get("event") == "queue.delivery_crashed"
                and entry.get("domain") == stage.domain
            ):
                seen.note = "".join(str(entry.get("exception", "")).strip().splitlines()[-1:])
            if entry.get("recipient_domain") != stage.domain:
                continue
            if entry.get("event") == "delivery.outcome" and entry.get("bounced_reason"):
                status = _STATUS.search(str(entry["bounced_reason"]))
                seen.bounce = status.group(0) if status else "bounced"
            for finding in entry.get("findings") or ():
                if finding["kind"] not in seen.findings:
                    seen.findings.append(finding["kind"])
                    seen.evidence.append(f"{finding['kind']}: {finding['evidence']}")
        for result in tee.by_domain.get(stage.domain, []):
            if result.result_type is not None and result.result_type not in seen.result_types:
                seen.result_types.append(str(result.result_type))
        if stage.note == "smuggling-rejected":
            seen.findings.append(stage.note)
        else:
            seen.note = stage.note
        return Outcome(stage.scenario, seen)

    def _reports(self, relay: Relay) -> list[dict[str, Any]]:
        day = dt.datetime.now(dt.UTC).date()
        reports = build_day_reports(relay.report_store, day, report_settings(relay.config))
        result: list[dict[str, Any]] = [json.loads(render_json(r)) for r in reports]
        return result


def _received(mx: LabMx) -> Callable[[], bool]:
    return lambda: bool(mx.messages)


def _message(rcpt: str, subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@sender.lab.test"
    msg["To"] = rcpt
    msg["Subject"] = subject
    msg.set_content(f"stsguard lab message for {rcpt}\n")
    return msg.as_bytes(policy=SMTP_POLICY)


async def _send(config: Config, rcpt: str, subject: str) -> None:
    """Send one message to the relay as an upstream MTA would (aiosmtplib: no threads, so the
    relay's own worker threads stay free)."""
    host, port = config.relay.listen_address
    await aiosmtplib.send(
        _message(rcpt, subject),
        sender="alice@sender.lab.test",
        recipients=[rcpt],
        hostname=host,
        port=port,
        start_tls=False,
        timeout=20,
    )


async def _send_requiretls(
    config: Config, rcpt: str, subject: str, context: ssl.SSLContext
) -> None:
    """Send one message over STARTTLS with ``MAIL FROM:<...> REQUIRETLS`` (RFC 8689)."""
    host, port = config.relay.listen_address
    client = aiosmtplib.SMTP(
        hostname=host, port=port, start_tls=False, tls_context=context, timeout=20
    )
    async with client:
        await client.starttls(server_hostname="relay.lab.test")
        await client.sendmail(
            "alice@sender.lab.test",
            [rcpt],
            _message(rcpt, subject),
            mail_options=["REQUIRETLS"],
        )


async def _smuggle(config: Config, rcpt: str) -> str:
    """Send a message whose body hides a second one behind ``<LF>.<LF>`` (SMTP smuggling).
    Returns ``smuggling-rejected`` when the relay refused it."""
    host, port = config.relay.listen_address
    hidden = (
        b"Subject: outer\r\n\r\nouter body\n.\nMAIL FROM:<ceo@bank.test>\r\nRCPT TO:<"
        + rcpt.encode()
        + b">\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
    )
    reader, writer = await asyncio.open_connection(host, port)
    try:

        async def command(line: bytes) -> int:
            if line:
                writer.write(line)
                await writer.drain()
            while True:
                reply = await asyncio.wait_for(reader.readline(), 20)
                if reply[3:4] != b"-":
                    return int(reply[:3] or b"0")

        await command(b"")
        await command(b"EHLO sender.lab.test\r\n")
        await command(b"MAIL FROM:<alice@sender.lab.test>\r\n")
        await command(b"RCPT TO:<" + rcpt.encode() + b">\r\n")
        if await command(b"DATA\r\n") != 354:
            return "smuggling-rejected"
        code = await command(hidden)
        await command(b"QUIT\r\n")
    finally:
        writer.close()
    return "smuggling-rejected" if code >= 500 else "accepted"


@contextlib.asynccontextmanager
async def _world(validating: bool) -> AsyncIterator[tuple[LabWorld, Path]]:
    with tempfile.TemporaryDirectory(prefix="stsguard-lab-") as tmp:
        async with LabWorld(Path(tmp) / "world", validating=validating).running() as world:
            yield world, Path(tmp) / "relay-state"


async def run_lab(
    names: Sequence[str] | None = None, prevalence: list[PrevalenceRow] | None = None
) -> tuple[list[Outcome], list[dict[str, Any]]]:
    """Run the named scenarios (all when None) and return their outcomes and the day's reports;
    the relay's downgrade-prevalence counts are added to `prevalence` when given."""
    # aiosmtpd logs every session a client aborts (our relay refusing a bad certificate) with a
    # traceback; in the lab that is the expected outcome, not news.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    scenarios = build_scenarios()
    if names:
        known = {s.name for s in scenarios}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"unknown scenario {unknown[0]!r} (see `stsguard lab` for the names)")
        scenarios = [s for s in scenarios if s.name in names]
    validating = any(s.policy.dane for s in scenarios)
    if validating and unbound_path() is None:
        # The DANE scenarios need a validating resolver; say so rather than fake one.
        print(f"stsguard lab: {MISSING}; the DANE scenarios are not run", file=sys.stderr)
        scenarios = [s for s in scenarios if not s.policy.dane]
        validating = False
    async with _world(validating) as (world, state_dir):
        run = LabRun(world, scenarios, state_dir)
        result = await run.run()
    if prevalence is not None:
        prevalence.extend(run.prevalence)
    return result


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_table(outcomes: Sequence[Outcome]) -> str:
    header = (
        "scenario",
        "attack",
        "policy",
        "delivered",
        "tls",
        "finding",
        "result type",
        "bounce",
        "ok",
    )
    rows = [
        (
            o.scenario.name,
            str(o.scenario.attack),
            str(o.scenario.policy),
            _cell(o.observed.delivered),
            _cell(o.observed.tls),
            _cell(o.finding),
            _cell(o.result_type),
            _cell(o.observed.bounce),
            "ok" if o.ok else "WRONG",
        )
        for o in outcomes
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def format_verdict(outcomes: Sequence[Outcome]) -> str:
    """The table, how many came out as expected, and what each wrong one saw instead."""
    wrong = [o for o in outcomes if not o.ok]
    lines = [format_table(outcomes), ""]
    lines.append(f"{len(outcomes) - len(wrong)} of {len(outcomes)} scenarios came out as expected.")
    lines += [
        f"  WRONG {o.scenario.name}: expected {o.scenario.expected}, saw {o.observed}"
        for o in wrong
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace, config: Config) -> int:
    """`stsguard lab [--json] [--scenario NAME]`: exit 0 only if every scenario came out right."""
    names = [args.scenario] if args.scenario else None
    prevalence: list[PrevalenceRow] = []
    outcomes, reports = asyncio.run(run_lab(names, prevalence))
    if args.json:
        for outcome in outcomes:
            print(json.dumps(outcome.as_json()))
    else:
        print(format_verdict(outcomes))
        print("\nTLS-RPT reports this lab day produced (as they would be sent):")
        for report in reports:
            print(json.dumps(report, indent=2))
        print("\nDowngrade prevalence the relay measured (`stsguard detect stats`), worst first:")
        print(format_prevalence("mx host", by_host(prevalence)))
    sys.stdout.flush()
    return 0 if all(o.ok for o in outcomes) else 1
