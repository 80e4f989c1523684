"""`stsguard lab`: every downgrade attack reproduced on loopback comes out as the table expects."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

from lab.runner import Outcome, format_table, run_lab
from lab.scenarios import CAUGHT_AS, Attack, PolicySetup, build_scenarios
from tests.tlsrpt_emit.strict import check_report, schema_errors

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab_run() -> tuple[list[Outcome], list[dict[str, Any]]]:
    """One run of every scenario, shared by the tests that read its outcomes and reports."""
    return asyncio.run(run_lab())


def test_every_scenario_comes_out_as_expected(
    lab_run: tuple[list[Outcome], list[dict[str, Any]]],
) -> None:
    outcomes, reports = lab_run
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


def test_every_lab_report_passes_the_strict_schema_and_parsedmarc(
    lab_run: tuple[list[Outcome], list[dict[str, Any]]],
) -> None:
    """Issue 14: every report the lab produces, through our RFC 8460 schema, parsedmarc and our
    own parser (D1, sending-mta-ip of sessions we refused, included)."""
    _, reports = lab_run
    assert len(reports) >= 40
    for doc in reports:
        check_report(doc)
    kinds = {
        d["result-type"]
        for doc in reports
        for p in doc["policies"]
        for d in p.get("failure-details", [])
    }
    assert {"starttls-not-supported", "certificate-expired", "sts-policy-fetch-error"} <= kinds


def test_d1_every_lab_session_failure_names_the_sending_mta_ip(
    lab_run: tuple[list[Outcome], list[dict[str, Any]]],
) -> None:
    _, reports = lab_run
    for doc in reports:
        assert schema_errors(doc) == []


def test_scenario_table_covers_every_attack_under_every_setup() -> None:
    names = {s.name for s in build_scenarios()}
    for attack in Attack:
        if attack.on_path:
            for policy in PolicySetup:
                if not policy.dane:
                    assert f"{attack}-{policy}" in names


def test_dane_lab_scenarios_cover_the_issue() -> None:
    # DANE-EE/TA delivered, attacker certificate, strip and garble, bogus DNSSEC, DANE beside
    # a weaker MTA-STS testing policy (STS-14), dane-only without TLSA.
    by_name = {s.name: s.expected for s in build_scenarios()}
    assert by_name["baseline-dane-ee"].delivered
    assert by_name["baseline-dane-ta"].delivered
    assert by_name["intercept-dane-ee"].tlsrpt_result_type == "tlsa-invalid"
    assert not by_name["strip-dane-ee"].delivered
    assert not by_name["garble-dane-ee"].delivered
    assert by_name["dnssec-bogus-dane-ee"].tlsrpt_result_type == "dnssec-invalid"
    assert not by_name["intercept-dane-ee-sts-testing"].delivered
    assert by_name["baseline-dane-only-no-tlsa"].tlsrpt_result_type == "dane-required"


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
