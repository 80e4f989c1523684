"""`stsguard lab`: every downgrade attack reproduced on loopback comes out as the table expects."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lab.runner import format_table, run_lab
from lab.scenarios import CAUGHT_AS, Attack, PolicySetup, build_scenarios

pytestmark = pytest.mark.slow


async def test_every_scenario_comes_out_as_expected() -> None:
    outcomes, reports = await run_lab()
    wrong = [o for o in outcomes if not o.ok]
    assert not wrong, "\n" + format_table(wrong) + "\n" + "\n".join(str(o.observed) for o in wrong)
    # Every striptls class and garbling is caught under enforce: not delivered, with its finding.
    for attack, (finding, result_type) in CAUGHT_AS.items():
        name = f"{attack}-enforce"
        (enforced,) = [o for o in outcomes if o.scenario.name == name]
        assert not enforced.observed.delivered
        assert enforced.finding == finding
        assert enforced.result_type == result_type
    # The day's TLS-RPT reports cover the policy domains with their failures.
    by_domain = {r["policies"][0]["policy"]["policy-domain"]: r for r in reports}
    garbled = by_domain["garble-enforce.lab.test"]["policies"][0]
    assert garbled["summary"]["total-failure-session-count"] >= 1
    assert garbled["failure-details"][0]["result-type"] == "starttls-not-supported"


def test_scenario_table_covers_every_attack_under_every_setup() -> None:
    names = {s.name for s in build_scenarios()}
    for attack in Attack:
        if attack.on_path:
            for policy in PolicySetup:
                assert f"{attack}-{policy}" in names


def test_cli_json_one_object_per_scenario_and_bad_name() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "relay.cli", "lab", "--json", "--scenario", "garble-enforce"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    (line,) = run.stdout.splitlines()
    obj = json.loads(line)
    for key in (
        "name",
        "attack",
        "policy_mode",
        "delivered",
        "tls",
        "finding",
        "tlsrpt_result_type",
        "expected_ok",
    ):
        assert key in obj
    assert obj["finding"] == "starttls-garbled"
    assert obj["expected_ok"] is True
    bad = subprocess.run(
        [sys.executable, "-m", "relay.cli", "lab", "--scenario", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
