"""`stsguard policy` and `stsguard probe` show DANE: DNSSEC states, TLSA records, policy applied."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab.mx import LabMx
from lab.world import LabWorld
from tests.cli import run_cli_async
from tests.unbound_world import need_unbound

DOMAIN = "dane.test"
MX = "mx.dane.test"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    need_unbound()
    async with LabWorld(tmp_path / "world", validating=True).running() as started:
        started.publish_mx(DOMAIN, [(10, MX)])
        yield started


async def _config(world: LabWorld, tmp_path: Path, **domains: str) -> Path:
    toml = world.relay_toml(tmp_path / "state")
    toml += "".join(f'\n[domains."{d}"]\ntls = "{t}"\n' for d, t in domains.items())
    path = tmp_path / "stsguard.toml"
    path.write_text(toml)
    return path


async def _mx(world: LabWorld, *, trusted: bool = False) -> tuple[LabMx, str]:
    ca = world.ca if trusted else world.ca.untrusted()
    issued = ca.issue(MX)
    mx = await world.serve_mx(LabMx("127.0.3.10", hostname=MX, tls_context=issued.server_context()))
    return mx, issued.tlsa(3, 1, 1)


async def test_dane_policy_command_shows_tlsa_and_dnssec(world: LabWorld, tmp_path: Path) -> None:
    _, record = await _mx(world)
    world.publish_tlsa(MX, [record])
    world.publish_policy(DOMAIN, "testing", [MX])
    config = await _config(world, tmp_path)
    _, out, _ = await run_cli_async("policy", DOMAIN, "--json", "--config", str(config))
    report = json.loads(out)
    dane = report["dane"]
    assert dane["dnssec"] == "ad"
    assert dane["mx_dnssec"] == "secure"
    host = dane["mx_hosts"][0]
    assert host["tlsa_dnssec"] == "secure"
    assert host["address_dnssec"] == "secure"
    assert host["tlsa"] == [record.upper()]
    assert host["policy"] == "dane"  # DANE wins over the testing policy (STS-14)
    _, text, _ = await run_cli_async("policy", DOMAIN, "--config", str(config))
    assert f"TLSA {record.upper()}" in text
    assert "policy: dane" in text


async def test_dane_policy_command_bogus_and_dane_only(world: LabWorld, tmp_path: Path) -> None:
    _, record = await _mx(world)
    world.publish_tlsa(MX, [record])
    world.dns.break_dnssec(f"_25._tcp.{MX}", "TLSA")
    config = await _config(world, tmp_path)
    code, out, _ = await run_cli_async("policy", DOMAIN, "--json", "--config", str(config))
    host = json.loads(out)["dane"]["mx_hosts"][0]
    assert host["tlsa_dnssec"] == "bogus"
    assert host["policy"] == "deferred"
    assert code == 1
    world.dns.break_dnssec(f"_25._tcp.{MX}", "TLSA", on=False)
    world.dns.remove(f"_25._tcp.{MX}")
    config = await _config(world, tmp_path, **{DOMAIN: "dane-only"})
    code, out, _ = await run_cli_async("policy", DOMAIN, "--json", "--config", str(config))
    host = json.loads(out)["dane"]["mx_hosts"][0]
    assert host["policy"] == "deferred"
    assert "dane-required" in host["why"]


async def test_dane_probe_checks_the_presented_chain(world: LabWorld, tmp_path: Path) -> None:
    _, record = await _mx(world)  # a certificate only DANE vouches for
    world.publish_tlsa(MX, [record])
    config = await _config(world, tmp_path)
    code, out, err = await run_cli_async("probe", DOMAIN, "--json", "--config", str(config))
    probe = json.loads(out)["mx"][0]
    assert probe["dane"]["status"] == "valid", (out, err)
    assert probe["findings"] == []  # the web PKI's verdict does not count under DANE
    assert code == 0
    # Now the TLSA names another key: the probe says so, with the tlsa-invalid finding.
    world.publish_tlsa(MX, [world.ca.issue(MX).tlsa(3, 1, 1)])
    code, out, _ = await run_cli_async("probe", DOMAIN, "--json", "--config", str(config))
    probe = json.loads(out)["mx"][0]
    assert probe["dane"]["status"] == "no-match"
    assert [f["result_type"] for f in probe["findings"]][-1] == "tlsa-invalid"
    assert code == 1
    code, text, _ = await run_cli_async("probe", DOMAIN, "--config", str(config))
    assert "DANE:         no-match" in text


async def test_dane_probe_flags_a_bogus_tlsa(world: LabWorld, tmp_path: Path) -> None:
    _, record = await _mx(world)
    world.publish_tlsa(MX, [record])
    world.dns.break_dnssec(f"_25._tcp.{MX}", "TLSA")
    config = await _config(world, tmp_path)
    code, out, _ = await run_cli_async("probe", DOMAIN, "--json", "--config", str(config))
    probe = json.loads(out)["mx"][0]
    assert probe["dane"]["status"] == "bogus"
    assert "TLSA look-up bogus" in probe["error"]
    assert code == 1
