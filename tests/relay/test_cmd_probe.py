"""`stsguard probe` as a user runs it: remembered TLS, the relay's decision, and exit codes that
can drive monitoring. Real lab MX hosts, DNS and policy host; the command is a subprocess."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from detect.dane import DaneStatus, TlsaRecord
from detect.model import Finding, FindingKind
from lab.mx import CertKind
from lab.world import LabWorld
from mtasts.model import Mode, Policy, PolicyResult, PolicySource
from relay.cli.probe import verdict
from relay.config import Config, DomainConfig, DomainTls
from relay.decision import Action, Observation, decide
from relay.delivery.dane_lookup import TlsaLookup
from relay.delivery.policy import HostFacts, destination, plan_host
from relay.delivery.session import Reply
from relay.diagnostics.probe import EhloInfo, MxProbe, TlsInfo
from relay.state.database import SqliteDatabase
from relay.state.history_store import SqlTlsHistoryStore
from relay.tls_rules import TlsaStatus
from tests.cli import run_cli_async

MX = "mx1.example.org"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[LabWorld]:
    async with LabWorld(tmp_path / "world").running() as w:
        yield w


def config_file(world: LabWorld, tmp_path: Path) -> Path:
    path = tmp_path / "stsguard.toml"
    path.write_text(world.relay_toml(tmp_path / "state"))
    return path


async def test_remembered_starttls_makes_a_stripped_host_a_downgrade(
    world: LabWorld, tmp_path: Path
) -> None:
    """The host the relay defers as a downgrade is not "findings: none" to probe any more."""
    await world.add_mx(MX, "127.0.0.71", cert=CertKind.NONE)  # offers no STARTTLS now
    world.publish_mx("example.org", [(10, MX)])
    config = config_file(world, tmp_path)
    store = SqlTlsHistoryStore(SqliteDatabase(tmp_path / "state" / "state.sqlite3"))
    store.record(MX, offered_starttls=True, valid_cert=True, now=time.time() - 86400)
    store.close()

    code, out, err = await run_cli_async("probe", "example.org", "--json", "--config", str(config))
    assert code == 1, err
    [entry] = json.loads(out)["mx"]
    assert entry["remembered"]["host"] == MX
    assert entry["remembered"]["last_starttls_at"] is not None
    # Remembered TLS makes STARTTLS expected, in probe as in delivery: stripped, and a downgrade.
    assert [f["kind"] for f in entry["findings"]] == ["starttls-stripped", "downgrade"]
    assert entry["decision"]["action"] == "defer"
    assert entry["decision"]["result_type"] == "starttls-not-supported"
    code, out, _ = await run_cli_async("probe", "example.org", "--config", str(config))
    assert code == 1
    assert f"    - downgrade (starttls-not-supported): {MX} offered STARTTLS at " in out
    assert "findings:     none" not in out
    assert "  relay would:  defer (starttls-not-supported): downgrade:" in out


async def test_clean_host_exits_0_and_would_be_delivered_over_tls(
    world: LabWorld, tmp_path: Path
) -> None:
    await world.add_mx(MX, "127.0.0.72", cert=CertKind.GOOD)
    world.publish_mx("example.org", [(10, MX)])
    world.publish_policy("example.org", "enforce", [MX])
    config = config_file(world, tmp_path)
    code, out, err = await run_cli_async("probe", "example.org", "--json", "--config", str(config))
    assert code == 0, err
    [entry] = json.loads(out)["mx"]
    assert entry["remembered"] is None
    assert entry["decision"] == {
        "action": "deliver-tls",
        "result_type": None,
        "reason": "TLS with a valid certificate",
    }
    assert not (tmp_path / "state").exists()  # probing reads remembered TLS, never creates it


async def test_expired_certificate_under_enforce_and_unreachable_mx_exit_1(
    world: LabWorld, tmp_path: Path
) -> None:
    await world.add_mx(MX, "127.0.0.73", cert=CertKind.EXPIRED)
    world.publish_mx("example.org", [(10, MX), (20, "mx2.example.org")])
    world.dns.set("mx2.example.org", "A", ["127.0.0.74"])  # nothing listens there
    world.publish_policy("example.org", "enforce", [MX, "mx2.example.org"])
    config = config_file(world, tmp_path)
    code, out, err = await run_cli_async("probe", "example.org", "--json", "--config", str(config))
    assert code == 1, err
    first, second = json.loads(out)["mx"]
    assert first["decision"]["action"] == "next-mx"
    assert first["decision"]["result_type"] == "certificate-expired"
    assert second["error"].startswith("connect:")
    assert second["decision"]["action"] == "defer"


def tls_probe(
    *, verified: bool, findings: list[Finding], dane: DaneStatus | None = None
) -> MxProbe:
    """An MX that spoke STARTTLS and TLS 1.3, as the probe records it."""
    return MxProbe(
        MX,
        10,
        "127.0.0.75",
        None,
        banner=Reply(220, "mx ESMTP"),
        ehlo=EhloInfo(250, ("STARTTLS",), True),
        starttls_reply=Reply(220, "go ahead"),
        tls=TlsInfo(
            "TLSv1.3",
            "TLS_AES_256_GCM_SHA384",
            verified=verified,
            result_type=None if verified else "certificate-not-trusted",
        ),
        findings=findings,
        dane={"status": str(dane), "reason": "-"} if dane else None,
        dane_status=dane,
    )


UNTRUSTED = Finding(FindingKind.TLS_FAILURE, "self-signed", result_type="certificate-not-trusted")
MISMATCH = Finding(FindingKind.TLSA_MISMATCH, "no TLSA record matched", result_type="tlsa-invalid")
SIGNED = TlsaLookup(TlsaStatus.SECURE, (TlsaRecord(3, 1, 1, b"\x01" * 32),), MX, (MX,))
BOGUS = TlsaLookup(TlsaStatus.BOGUS, reason="SERVFAIL")


@pytest.mark.parametrize(
    ("probe", "tlsa", "action", "result_type"),
    [
        # No TLSA: the web PKI and no policy: opportunistic TLS delivers anyway.
        (tls_probe(verified=False, findings=[UNTRUSTED]), None, "deliver-tls", None),
        # DANE-EE on a self-signed certificate: the probe dropped the PKIX finding; delivered.
        (
            tls_probe(verified=False, findings=[], dane=DaneStatus.VALID),
            SIGNED,
            "deliver-tls",
            None,
        ),
        # The chain matches no TLSA record: DANE is strict, the relay defers (RFC 7672 2.2).
        (
            tls_probe(verified=False, findings=[MISMATCH], dane=DaneStatus.NO_MATCH),
            SIGNED,
            "defer",
            "tlsa-invalid",
        ),
        (tls_probe(verified=True, findings=[]), BOGUS, "defer", "dnssec-invalid"),
    ],
)
def test_the_decision_probe_shows_is_the_relays(
    probe: MxProbe, tlsa: TlsaLookup | None, action: str, result_type: str | None
) -> None:
    dest = destination("example.org", Config(), sts=None)
    plan = plan_host(dest, HostFacts(MX, tlsa), last_mx=True, now=1e9)
    seen = verdict(probe, plan, now=1e9, history_days=30)
    assert (str(seen.decision.action), seen.decision.result_type) == (action, result_type)


ENFORCE = PolicyResult(
    "example.org",
    Policy(Mode.ENFORCE, 86400, (MX,), f"version: STSv1\nmode: enforce\nmx: {MX}\nmax_age: 86400"),
    PolicySource.FRESH,
)


@pytest.mark.parametrize(
    "probe",
    [
        tls_probe(verified=True, findings=[]),
        tls_probe(verified=False, findings=[UNTRUSTED]),
        replace(tls_probe(verified=True, findings=[]), starttls_reply=Reply(454, "not now")),
    ],
)
@pytest.mark.parametrize("sts", [None, ENFORCE])
def test_under_tls_none_the_verdict_is_deliverys_whatever_tls_the_host_speaks(
    probe: MxProbe, sts: PolicyResult | None
) -> None:
    # Delivery sends no STARTTLS under `tls = "none"`: the probe may show what the host offers,
    # but its verdict is made of what delivery sees (the EHLO), as delivery's own is.
    config = Config(domains={"example.org": DomainConfig(tls=DomainTls.NONE)})
    plan = plan_host(
        destination("example.org", config, sts=sts), HostFacts(MX), last_mx=True, now=1e9
    )
    seen = verdict(probe, plan, now=1e9, history_days=30)
    delivery = decide(plan.policy, Observation(offered_starttls=True), (), last_mx=True)
    assert seen.decision == delivery
    assert seen.decision.action is Action.DELIVER_PLAINTEXT
