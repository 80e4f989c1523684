"""`stsguard policy DOMAIN` as a subprocess against the lab DNS, policy host and CA."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lab.dns import LabDns
from lab.pki import LabCA
from lab.policy_host import Failure, PolicyHost
from relay.cli import main
from tests.cli import run_cli_async


@pytest.fixture
async def policy_host(lab_ca: LabCA) -> AsyncIterator[PolicyHost]:
    host = PolicyHost(lab_ca)
    async with host.running():
        yield host


@pytest.fixture
def config_file(tmp_path: Path, lab_dns: LabDns, lab_ca: LabCA, policy_host: PolicyHost) -> Path:
    path = tmp_path / "stsguard.toml"
    path.write_text(
        f'[relay]\nstate_dir = "{tmp_path / "state"}"\nlog_format = "json"\n'
        f'[dns]\nnameservers = ["{lab_dns.address}"]\ntimeout = 5\n'
        f'[tls]\nca_file = "{lab_ca.ca_file}"\n'
        f"[mtasts]\nhttps_port = {policy_host.port}\nfetch_timeout = 5\n"
    )
    return path


stsguard = run_cli_async


async def policy_json(domain: str, config: Path) -> dict[str, Any]:
    code, out, err = await stsguard("policy", domain, "--json", "--config", str(config))
    result: dict[str, Any] = json.loads(out)
    assert code == (1 if result["problems"] else 0), err  # exit 1 whenever a problem is listed
    return result


def publish(dns: LabDns, host: PolicyHost, domain: str, policy: str, record_id: str = "a1") -> None:
    dns.add(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={record_id};")
    dns.add(f"mta-sts.{domain}", "A", "127.0.0.1")
    host.set_policy(domain, policy)


async def test_policy_json_full_setup(
    config_file: Path, lab_dns: LabDns, policy_host: PolicyHost
) -> None:
    policy = "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 3600\n"
    publish(lab_dns, policy_host, "example.org", policy)
    lab_dns.add("example.org", "MX", "10 mx.example.org.")
    lab_dns.add("example.org", "MX", "20 rogue.example.net.")
    lab_dns.add("_smtp._tls.example.org", "TXT", "v=TLSRPTv1; rua=mailto:tlsrpt@example.org")
    result = await policy_json("Example.org", config_file)
    assert result["domain"] == "example.org"
    assert result["sts_record"] == {"id": "a1"}
    assert result["policy"]["mode"] == "enforce"
    assert result["policy"]["mx"] == ["mx.example.org"]
    assert result["policy"]["max_age"] == 3600
    assert result["policy_error"] is None
    assert result["tlsrpt"] == {"rua": ["mailto:tlsrpt@example.org"]}
    assert result["mx_hosts"] == [
        {"host": "mx.example.org", "matches_policy": True},
        {"host": "rogue.example.net", "matches_policy": False},
    ]
    problems = " | ".join(result["problems"])
    assert "max_age below 1 day is short" in problems
    assert "rogue.example.net does not match" in problems
    assert "no TLS-RPT record" not in problems
    assert policy_host.requests["example.org"] == 1
    # What `stsguard socketmap` would tell Postfix, from the same look-ups.
    assert result["socketmap"]["postfix"] == "OK secure match=mx.example.org servername=hostname"
    assert result["socketmap"]["tlsrpt"].startswith(
        "OK secure match=mx.example.org servername=hostname policy_type=sts"
    )


async def test_policy_clean_setup_exits_0_and_failed_lookups_exit_1(
    config_file: Path, lab_dns: LabDns, policy_host: PolicyHost, tmp_path: Path
) -> None:
    policy = "version: STSv1\nmode: enforce\nmx: mx.clean.example\nmax_age: 604800\n"
    publish(lab_dns, policy_host, "clean.example", policy)
    lab_dns.add("clean.example", "MX", "10 mx.clean.example.")
    lab_dns.add("_smtp._tls.clean.example", "TXT", "v=TLSRPTv1; rua=mailto:tlsrpt@clean.example")
    code, out, err = await stsguard("policy", "clean.example", "--config", str(config_file))
    assert (code, err) == (0, "")
    assert "problems:     none found" in out
    assert "socketmap:    'OK secure match=mx.clean.example servername=hostname'" in out
    # Nothing answers DNS: every look-up fails, and a monitoring check must see it.
    dead = tmp_path / "dead.toml"
    dead.write_text('[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = "1s"\n')
    code, out, _ = await stsguard("policy", "clean.example", "--json", "--config", str(dead))
    assert code == 1
    assert any("look-up failed" in p for p in json.loads(out)["problems"])


async def test_policy_domain_without_policy_exits_1_with_nulls(config_file: Path) -> None:
    result = await policy_json("nothing.example", config_file)
    assert result["sts_record"] is None
    assert result["policy"] is None
    assert result["policy_error"] is None
    assert result["tlsrpt"] is None
    assert any("no TLS-RPT record" in p for p in result["problems"])
    assert result["socketmap"] == {"postfix": "NOTFOUND ", "tlsrpt": "NOTFOUND "}


async def test_policy_bad_certificate_and_fetch_failure(
    config_file: Path, lab_dns: LabDns, policy_host: PolicyHost
) -> None:
    good = "version: STSv1\nmode: enforce\nmx: mx.{d}\nmax_age: 604800\n"
    publish(lab_dns, policy_host, "badcert.example", good.format(d="badcert.example"))
    policy_host.set_failure("badcert.example", Failure.WRONG_NAME_CERT)
    publish(lab_dns, policy_host, "down.example", good.format(d="down.example"))
    policy_host.set_failure("down.example", Failure.STATUS_404)
    bad, down = await asyncio.gather(
        policy_json("badcert.example", config_file), policy_json("down.example", config_file)
    )
    assert bad["sts_record"] == {"id": "a1"}
    assert bad["policy"] is None
    assert bad["policy_error"]["result_type"] == "sts-webpki-invalid"
    assert any(
        p.startswith("policy host certificate not valid for mta-sts.badcert.example")
        for p in bad["problems"]
    )
    assert down["policy_error"]["result_type"] == "sts-policy-fetch-error"
    assert any("TXT record present but policy fetch failed" in p for p in down["problems"])


async def test_policy_text_output_mode_none(
    config_file: Path, lab_dns: LabDns, policy_host: PolicyHost
) -> None:
    publish(lab_dns, policy_host, "none.example", "version: STSv1\nmode: none\nmax_age: 86400\n")
    lab_dns.add("_mta-sts.twice.example", "TXT", "v=STSv1; id=1")
    lab_dns.add("_mta-sts.twice.example", "TXT", "v=STSv1; id=2")
    code, out, err = await stsguard("policy", "none.example", "--config", str(config_file))
    assert code == 1, err
    assert "mode:       none" in out
    assert "mx pattern list empty" in out
    assert "TLS-RPT rua:  none" in out
    twice = await policy_json("twice.example", config_file)
    assert twice["sts_record"] is None
    assert any("2 v=STSv1 records" in p for p in twice["problems"])


async def test_policy_bad_domain_exits_2_with_one_line(config_file: Path) -> None:
    code, out, err = await stsguard("policy", "not a domain!", "--config", str(config_file))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "not a domain name" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("bad", ["[192.0.2.1]", "192.0.2.1", "a..b", "-x.example", "x_y.example"])
def test_policy_bad_domain_in_process(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "--", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "is not a domain name" in err
