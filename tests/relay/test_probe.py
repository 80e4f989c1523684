"""`stsguard probe DOMAIN`: real lab MX hosts, policy host and DNS on loopback (LabWorld)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lab.attacker import Attacker, AttackMode
from lab.mx import CertKind
from lab.world import LabWorld
from relay.config import Config
from relay.diagnostics.probe import ProbeReport, probe_domain
from relay.resolver import make_resolver
from relay.tls import client_context
from tests.cli import run_cli_async

MX1 = "mx1.example.org"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    async with LabWorld(tmp_path / "world").running() as w:
        yield w


async def probe(world: LabWorld, tmp_path: Path, domain: str = "example.org") -> ProbeReport:
    config: Config = world.relay_config(tmp_path / "state")
    return await probe_domain(
        domain,
        config,
        resolver=make_resolver(config.dns),
        ssl_context=client_context(config.tls.ca_file),
    )


def kinds(entry: dict[str, Any]) -> list[str]:
    return [f["kind"] for f in entry["findings"]]


async def test_good_mx_under_enforce_is_verified_and_matches(
    world: LabWorld, tmp_path: Path
) -> None:
    mx = await world.add_mx(MX1, "127.0.0.61", cert=CertKind.GOOD)
    world.publish_mx("example.org", [(10, MX1)])
    world.publish_policy("example.org", "enforce", ["*.example.org"])
    report = (await probe(world, tmp_path)).as_json()
    assert report["domain"] == "example.org"
    assert report["policy"] == {"mode": "enforce", "mx": ["*.example.org"]}
    [entry] = report["mx"]
    assert entry["host"] == MX1
    assert entry["preference"] == 10
    assert entry["address"] == "127.0.0.61"
    assert entry["matches_policy"] is True
    assert entry["banner"]["code"] == 220
    assert entry["ehlo"]["code"] == 250
    assert entry["ehlo"]["starttls"] is True
    assert "STARTTLS" in entry["ehlo"]["keywords"]
    assert entry["starttls_reply"]["code"] == 220
    tls = entry["tls"]
    assert tls["verified"] is True
    assert tls["result_type"] is None
    assert tls["version"] in ("TLSv1.2", "TLSv1.3")
    assert tls["cipher"]
    assert MX1 in tls["certificate"]["san"]
    assert "stsguard lab CA" in tls["certificate"]["issuer"]
    assert tls["certificate"]["not_after"].endswith("Z")
    assert entry["ehlo_after_tls"]["code"] == 250
    assert entry["findings"] == []
    assert entry["error"] is None
    assert mx.messages == []  # never MAIL


async def test_no_starttls_under_enforce_is_a_stripped_finding(
    world: LabWorld, tmp_path: Path
) -> None:
    await world.add_mx(MX1, "127.0.0.62", cert=CertKind.NONE)
    world.publish_mx("example.org", [(10, MX1)])
    world.publish_policy("example.org", "enforce", [MX1])
    [entry] = (await probe(world, tmp_path)).as_json()["mx"]
    assert entry["ehlo"]["starttls"] is False
    assert entry["starttls_reply"] is None
    assert entry["tls"] is None
    assert kinds(entry) == ["starttls-stripped"]
    assert entry["findings"][0]["result_type"] == "starttls-not-supported"
    assert entry["error"] is None


async def test_no_starttls_without_policy_is_no_finding(world: LabWorld, tmp_path: Path) -> None:
    await world.add_mx(MX1, "127.0.0.63", cert=CertKind.NONE)
    world.publish_mx("example.org", [(10, MX1)])
    report = (await probe(world, tmp_path)).as_json()
    assert report["policy"] is None
    [entry] = report["mx"]
    assert entry["matches_policy"] is None
    assert entry["ehlo"]["starttls"] is False
    assert entry["findings"] == []


async def test_expired_certificate_reported_with_details(world: LabWorld, tmp_path: Path) -> None:
    await world.add_mx(MX1, "127.0.0.64", cert=CertKind.EXPIRED)
    world.publish_mx("example.org", [(10, MX1)])
    world.publish_policy("example.org", "testing", [MX1])
    [entry] = (await probe(world, tmp_path)).as_json()["mx"]
    tls = entry["tls"]
    assert tls["verified"] is False
    assert tls["result_type"] == "certificate-expired"
    assert tls["version"] in ("TLSv1.2", "TLSv1.3")
    assert MX1 in tls["certificate"]["san"]
    assert "stsguard lab CA" in tls["certificate"]["issuer"]
    assert kinds(entry) == ["tls-failure"]
    assert entry["findings"][0]["result_type"] == "certificate-expired"
    assert entry["findings"][0]["reason_code"] == "X509_V_ERR_CERT_HAS_EXPIRED"
    assert entry["error"] is None


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        (AttackMode.INJECT, "plaintext-injection"),
        (AttackMode.GARBLE, "starttls-garbled"),
        (AttackMode.STARTTLS_454, "starttls-rejected"),
    ],
)
async def test_attacker_in_front_of_mx(
    world: LabWorld, tmp_path: Path, mode: AttackMode, kind: str
) -> None:
    mx = await world.add_mx(MX1, "127.0.0.65", cert=CertKind.GOOD)
    attacker = Attacker((mx.host, mx.port), mode, host="127.0.0.66", port=mx.port)
    await world.keep(attacker.running())
    world.dns.set(MX1, "A", [attacker.host])
    world.publish_mx("example.org", [(10, MX1)])
    world.publish_policy("example.org", "enforce", [MX1])
    [entry] = (await probe(world, tmp_path)).as_json()["mx"]
    assert entry["address"] == attacker.host
    assert kind in kinds(entry)
    assert entry["tls"] is None


async def test_unreachable_and_unlisted_mx_are_reported(world: LabWorld, tmp_path: Path) -> None:
    await world.add_mx(MX1, "127.0.0.67", cert=CertKind.GOOD)
    world.dns.set("mx2.example.net", "A", ["127.0.0.68"])  # nothing listens there
    world.publish_mx("example.org", [(10, MX1), (20, "mx2.example.net")])
    world.publish_policy("example.org", "enforce", ["*.example.org"])
    report = await probe(world, tmp_path)
    first, second = report.as_json()["mx"]
    assert first["tls"]["verified"] is True
    assert second["host"] == "mx2.example.net"
    assert second["matches_policy"] is False
    assert second["banner"] is None
    assert second["error"].startswith("connect:")
    text = report.as_text()
    assert "NOT in policy" in text
    assert "certificate verified" in text


stsguard = run_cli_async


async def test_cli_probe_json_and_text(world: LabWorld, tmp_path: Path) -> None:
    await world.add_mx(MX1, "127.0.0.69", cert=CertKind.GOOD)
    world.publish_mx("example.org", [(10, MX1)])
    world.publish_policy("example.org", "enforce", [MX1])
    config = tmp_path / "stsguard.toml"
    config.write_text(world.relay_toml(tmp_path / "state"))
    code, out, err = await stsguard("probe", "example.org", "--json", "--config", str(config))
    assert code == 0, err
    report = json.loads(out)
    assert report["policy"]["mode"] == "enforce"
    [entry] = report["mx"]
    assert entry["matches_policy"] is True
    assert entry["tls"]["verified"] is True
    assert MX1 in entry["tls"]["certificate"]["san"]
    code, out, err = await stsguard("probe", "example.org", "--config", str(config))
    assert code == 0, err
    assert f"MX {MX1} (preference 10) at 127.0.0.69, matches policy" in out
    assert "certificate verified" in out


@pytest.mark.parametrize("domain", ["not a domain", "[127.0.0.1]", "example..org"])
async def test_cli_bad_domain_is_one_line_exit_2(
    world: LabWorld, tmp_path: Path, domain: str
) -> None:
    config = tmp_path / "stsguard.toml"
    config.write_text(world.relay_toml(tmp_path / "state"))
    code, out, err = await stsguard("probe", domain, "--config", str(config))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("stsguard: error: probe:")
    assert "Traceback" not in err
