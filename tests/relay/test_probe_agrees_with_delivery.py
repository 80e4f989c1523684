"""`stsguard probe` and delivery agree on every host of every lab scenario.

Both plan each MX host through `relay.delivery.policy` and decide through `relay.decision`, so
what the probe says the relay would do is what delivery does. The lab's scenarios (every on-path
attack under every policy set-up, DANE included when unbound is installed) are staged in one lab
world; for each, the probe runs first, then a real `Deliverer` sends one message through the same
MX (and attacker). Left out: the scenarios that turn on the relay's policy cache (the probe
fetches the policy live by design) and SMTP smuggling (the probe sends no message); the REQUIRETLS
set-ups are sent an ordinary message (what the probe answers for).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from detect.history import MemoryTlsHistoryStore
from detect.model import Finding
from lab.attacker import Attacker
from lab.runner import LabRun
from lab.scenarios import Attack, PolicySetup, build_scenarios
from lab.unbound import unbound_path
from lab.world import LabWorld
from mtasts.cache import MemoryPolicyStore
from mtasts.service import PolicyService
from relay.cli.probe import verdict
from relay.config import Config
from relay.decision import Decision
from relay.delivery import deliverer as deliverer_module
from relay.delivery.deliverer import Deliverer, DeliveryRequest
from relay.delivery.policy import Destination, MxPlan, Refusal, plan_host
from relay.diagnostics.probe import probe_domain
from relay.resolver import make_resolver
from relay.tls import client_context
from tests.relay_process import enforced_example_org
from tlsrpt_emit.model import MemorySink

LEFT_OUT = (Attack.POLICY_HOST_BLOCKED, Attack.TXT_REMOVED, Attack.SMUGGLE)
DAY = 86400

# MX host -> (action, result type, finding kinds)
Verdicts = dict[str, tuple[str, str | None, frozenset[str]]]


def _said(
    decision: Decision, findings: Iterable[Finding] = ()
) -> tuple[str, str | None, frozenset[str]]:
    result = decision.result_type
    kinds = frozenset(str(f.kind) for f in findings)
    return str(decision.action), str(result) if result is not None else None, kinds


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    validating = unbound_path() is not None
    async with LabWorld(tmp_path / "world", validating=validating).running() as w:
        yield w


class Spy:
    """Each MX host's decision as delivery took it: the first attempt on the host, or why the
    host was not connected to (DANE, reported; outside an enforce policy, only planned)."""

    def __init__(self, deliverer: Deliverer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: dict[str, Verdicts] = {}
        reporter = deliverer.reporter

        def planned(dest: Destination, *args: Any, **kwargs: Any) -> MxPlan:
            plan = plan_host(dest, *args, **kwargs)
            if plan.refused_by is Refusal.NOT_IN_POLICY and plan.refusal is not None:
                self.seen.setdefault(dest.domain, {}).setdefault(plan.host, _said(plan.refusal))
            return plan

        monkeypatch.setattr(deliverer_module, "plan_host", planned)
        real_attempt, real_refused = reporter.attempt, reporter.refused

        async def attempt(request: DeliveryRequest, plan: MxPlan, *rest: Any) -> None:
            seen = _said(rest[1].decision, rest[1].findings)
            self.seen.setdefault(request.domain, {}).setdefault(plan.host, seen)
            await real_attempt(request, plan, *rest)

        def refused(request: DeliveryRequest, plan: MxPlan) -> None:
            assert plan.refusal is not None
            self.seen.setdefault(request.domain, {}).setdefault(plan.host, _said(plan.refusal))
            real_refused(request, plan)

        reporter.attempt = attempt  # type: ignore[method-assign]
        reporter.refused = refused  # type: ignore[method-assign]


async def _probe(domain: str, config: Config, history: MemoryTlsHistoryStore) -> Verdicts:
    now = time.time()
    report = await probe_domain(
        domain,
        config,
        resolver=make_resolver(config.dns),
        ssl_context=client_context(config.tls.ca_file),
        history=history.get,
        now=now,
    )
    days = config.detect.history_days
    verdicts: Verdicts = {}
    for entry in report.mx:
        seen = verdict(entry, report.plans[entry.host], now=now, history_days=days)
        verdicts.setdefault(entry.host, _said(seen.decision, seen.findings))
    return verdicts


async def test_probe_and_delivery_agree_on_every_lab_scenario(
    world: LabWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenarios = [
        s
        for s in build_scenarios()
        if s.attack not in LEFT_OUT and (world.unbound is not None or not s.policy.dane)
    ]
    run = LabRun(world, scenarios, tmp_path / "state")
    history = MemoryTlsHistoryStore()
    async with run.staged() as stages:
        config = run.relay_config()
        resolver = make_resolver(config.dns)
        ssl_context = client_context(config.tls.ca_file)
        policies = PolicyService(
            MemoryPolicyStore(), resolver, ssl_context, https_port=config.mtasts.https_port
        )
        deliverer = Deliverer(
            config,
            resolver=resolver,
            policy_service=policies,
            history_store=history,
            sink=MemorySink(),
            ssl_context=ssl_context,
        )
        spy = Spy(deliverer, monkeypatch)
        for stage in stages:
            if stage.scenario.policy is PolicySetup.REMEMBERED:
                # The MX spoke valid TLS yesterday; now the attacker stands in front of it.
                mx_name = f"mx.{stage.domain}"
                history.record(
                    mx_name, offered_starttls=True, valid_cert=True, now=time.time() - DAY
                )
                assert stage.attacker is not None
                stage.attacker.mode = str(stage.scenario.attack)  # type: ignore[assignment]
        probed: dict[str, Verdicts] = {}
        slots = asyncio.Semaphore(8)

        async def one(domain: str, n: int) -> None:
            async with slots:
                probed[domain] = await _probe(domain, config, history)
                message = f"Subject: agree {n}\r\n\r\nhello\r\n".encode()
                request = DeliveryRequest(f"q{n}", "alice@sender.test", (f"bob@{domain}",), message)
                await deliverer.deliver(request)

        await asyncio.gather(*(one(stage.domain, n) for n, stage in enumerate(stages)))
        await deliverer.close()

    disagree, untried = [], []
    for stage in stages:
        delivered = spy.seen.get(stage.domain, {})
        if not delivered:
            untried.append(stage.scenario.name)
        for host, decision in delivered.items():
            if probed[stage.domain].get(host) != decision:
                disagree.append(
                    f"{stage.scenario.name} {host}: probe {probed[stage.domain].get(host)}, "
                    f"delivery {decision}"
                )
    assert not disagree, "\n".join(disagree)
    assert not untried, f"delivery decided nothing for {untried}"
    assert len(stages) >= 50


@pytest.mark.parametrize("attack", [None, "intercept", "inject", "starttls-454", "strip"])
async def test_probe_and_delivery_agree_under_tls_none(
    world: LabWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attack: str | None
) -> None:
    # `tls = "none"` for a domain that publishes an enforce policy: delivery sends no STARTTLS
    # (plaintext, reported under the policy); the probe still says STARTTLS to show what the host
    # speaks, but decides on what delivery sees.
    mx = await enforced_example_org(world)
    config = world.relay_config(
        tmp_path / "state", tlsrpt={"enabled": False}, domains={"example.org": {"tls": "none"}}
    )
    if attack is not None:
        address = (mx.host, world.mx_port)
        on_path = Attacker(
            address, attack, host="127.0.0.12", port=world.mx_port, mx_name=mx.hostname, ca=world.ca
        )
        await world.keep(on_path.running())
        world.dns.set("mx1.example.org", "A", ["127.0.0.12"])
    history = MemoryTlsHistoryStore()
    resolver = make_resolver(config.dns)
    ssl_context = client_context(config.tls.ca_file)
    probed = await _probe("example.org", config, history)
    deliverer = Deliverer(
        config,
        resolver=resolver,
        policy_service=PolicyService(
            MemoryPolicyStore(), resolver, ssl_context, https_port=config.mtasts.https_port
        ),
        history_store=history,
        sink=MemorySink(),
        ssl_context=ssl_context,
    )
    spy = Spy(deliverer, monkeypatch)
    message = b"Subject: x\r\n\r\nhi\r\n"
    request = DeliveryRequest("q1", "alice@sender.test", ("bob@example.org",), message)
    try:
        outcome = await deliverer.deliver(request)
    finally:
        await deliverer.close()
    assert outcome.delivered
    assert spy.seen["example.org"] == probed
    assert probed["mx1.example.org"][0] == "deliver-plaintext"
