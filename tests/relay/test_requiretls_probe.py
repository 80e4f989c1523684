"""`stsguard probe DOMAIN` says whether a REQUIRETLS message (RFC 8689) could be delivered now,
and why not, against lab MX hosts on loopback."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab.mx import CertKind, LabMx
from lab.world import LabWorld
from relay.cli.probe import RequireTlsAnswer, requiretls_answer
from relay.config import Config
from relay.diagnostics.probe import probe_domain
from relay.resolver import make_resolver
from relay.tls import client_context
from tests.cli import run_cli_async

MX1 = "mx1.example.org"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    async with LabWorld(tmp_path / "world").running() as w:
        yield w


async def _answer(world: LabWorld, tmp_path: Path) -> RequireTlsAnswer | None:
    config: Config = world.relay_config(tmp_path / "state")
    report = await probe_domain(
        "example.org",
        config,
        resolver=make_resolver(config.dns),
        ssl_context=client_context(config.tls.ca_file),
    )
    return requiretls_answer(report, now=time.time(), history_days=30)


async def _mx(world: LabWorld, *, offers: bool, cert: CertKind = CertKind.GOOD) -> LabMx:
    mx = LabMx.with_cert(world.ca, MX1, host="127.0.0.71", cert=cert)
    mx.requiretls = offers
    await world.serve_mx(mx)
    world.publish_mx("example.org", [(10, MX1)])
    return mx


@pytest.mark.parametrize(
    ("mode", "offers", "cert", "outcome", "says"),
    [
        ("enforce", True, CertKind.GOOD, "delivered", "offers REQUIRETLS"),
        ("enforce", False, CertKind.GOOD, "bounced", "5.7.30"),
        ("testing", True, CertKind.GOOD, "bounced", "5.7.10"),
        (None, True, CertKind.GOOD, "bounced", "5.7.10"),
        ("enforce", True, CertKind.EXPIRED, "deferred", "4.7.10"),
    ],
)
async def test_rt02_probe_says_whether_requiretls_could_be_delivered(
    world: LabWorld,
    tmp_path: Path,
    mode: str | None,
    offers: bool,
    cert: CertKind,
    outcome: str,
    says: str,
) -> None:
    mx = await _mx(world, offers=offers, cert=cert)
    if mode is not None:
        world.publish_policy("example.org", mode, [MX1])
    answer = await _answer(world, tmp_path)
    assert answer is not None
    assert answer.outcome == outcome
    assert says in answer.reason
    assert mx.messages == []  # the probe never sends MAIL


async def test_probe_command_prints_the_requiretls_line(world: LabWorld, tmp_path: Path) -> None:
    await _mx(world, offers=False)
    world.publish_policy("example.org", "enforce", [MX1])
    config_file = tmp_path / "relay.toml"
    config_file.write_text(world.relay_toml(tmp_path / "state"))
    _, out, err = await run_cli_async("probe", "example.org", "--config", str(config_file))
    assert "REQUIRETLS:     no, bounced: 550 5.7.30" in out, out + err
