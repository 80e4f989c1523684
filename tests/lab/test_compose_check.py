"""lab/compose-check's judging, without docker: which scenario a message is, what the container
logs say happened to it, and whether the collector's reports name what the attacks caused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lab.compose_check import (
    DOMAINS,
    MODES,
    check_reports,
    json_lines,
    observe,
    queue_id_of,
    scenario_for,
)
from lab.runner import Outcome
from lab.scenarios import Attack, PolicySetup, Scenario

LAB = Path(__file__).resolve().parents[2] / "lab"


def _row(attack: Attack, policy: PolicySetup, *, tls_seen_before: bool) -> Scenario:
    scenario = scenario_for(attack, policy, tls_seen_before=tls_seen_before)
    assert scenario is not None, f"no row for {attack} under {policy}"
    return scenario


def test_every_attacker_mode_is_checked_attack_free_first() -> None:
    from lab.attacker import AttackMode

    assert [str(m) for m in MODES] == [str(m) for m in AttackMode]
    assert MODES[0] is Attack.NONE


def test_no_policy_rows_become_remembered_tls_after_the_first_mode() -> None:
    first = _row(Attack.NONE, PolicySetup.NO_POLICY, tls_seen_before=False)
    later = _row(Attack.STRIP, PolicySetup.NO_POLICY, tls_seen_before=True)
    assert first.name == "baseline-no-policy"
    assert later.name == "strip-no-policy-remembered-tls"
    assert not later.expected.delivered
    assert later.expected.finding == "downgrade"
    enforce = _row(Attack.GARBLE, PolicySetup.ENFORCE, tls_seen_before=True)
    assert enforce.name == "garble-enforce"
    assert set(DOMAINS) == {
        PolicySetup.ENFORCE,
        PolicySetup.TESTING,
        PolicySetup.NO_POLICY,
        PolicySetup.DANE_EE,
    }


def test_dane_rows_where_the_table_has_them() -> None:
    """The DANE domain is checked under the attacks the table names for DANE-EE, skipped else."""
    assert _row(Attack.NONE, PolicySetup.DANE_EE, tls_seen_before=True).name == "baseline-dane-ee"
    intercept = _row(Attack.INTERCEPT, PolicySetup.DANE_EE, tls_seen_before=True)
    assert intercept.expected.tlsrpt_result_type == "tlsa-invalid"
    assert not intercept.expected.delivered
    assert scenario_for(Attack.STARTTLS_501, PolicySetup.DANE_EE, tls_seen_before=True) is None


def test_queue_id_from_swaks_output() -> None:
    out = "<~  354 End data with <CR><LF>.<CR><LF>\n<-  250 2.0.0 Ok: queued as ABCDEFGHIJKLMNOP\n"
    assert queue_id_of(out) == "ABCDEFGHIJKLMNOP"
    assert queue_id_of("<** 451 4.3.0 Error\n") is None


def test_json_lines_under_compose_log_prefixes() -> None:
    text = 'relay_1  | {"event": "relay.started"}\nrelay_1  | not json\n{"a": 1}\n[1, 2]\n'
    assert json_lines(text) == [{"event": "relay.started"}, {"a": 1}]


def _attempt(queue_id: str, kind: str | None, result_type: str | None) -> dict[str, object]:
    findings = [{"kind": kind, "evidence": "250-XXXXXXXA"}] if kind else []
    return {
        "event": "delivery.attempt",
        "queue_id": queue_id,
        "findings": findings,
        "result_type": result_type,
    }


def test_a_deferred_garble_under_enforce_is_judged_right() -> None:
    scenario = _row(Attack.GARBLE, PolicySetup.ENFORCE, tls_seen_before=True)
    relay = [
        _attempt("OTHER", None, None),
        _attempt("Q1", "starttls-garbled", "starttls-not-supported"),
    ]
    seen, settled = observe("Q1", "s", relay, [])
    assert settled
    assert not seen.delivered
    assert Outcome(scenario, seen).ok


def test_a_delivery_is_read_from_the_mx_log_with_its_tls() -> None:
    scenario = _row(Attack.INTERCEPT, PolicySetup.TESTING, tls_seen_before=True)
    relay = [_attempt("Q2", "tls-failure", "certificate-not-trusted")]
    mx = [{"received": "message", "subject": "compose-check x", "tls": True}]
    seen, _ = observe("Q2", "compose-check x", relay, mx)
    assert seen.delivered
    assert seen.tls
    assert Outcome(scenario, seen).ok
    # the same logs judged against enforce: delivered where it must not be
    enforce = _row(Attack.INTERCEPT, PolicySetup.ENFORCE, tls_seen_before=True)
    assert not Outcome(enforce, seen).ok


def test_no_attempt_yet_is_not_an_outcome() -> None:
    seen, settled = observe("Q3", "s", [_attempt("Q9", None, None)], [])
    assert not settled
    assert not seen.delivered


def test_a_delivery_the_relay_logged_waits_for_the_mx_line() -> None:
    attempt = {**_attempt("Q4", None, None), "outcome": "delivered"}
    _, settled = observe("Q4", "s", [attempt], [])
    assert not settled
    seen, settled = observe("Q4", "s", [attempt], [{"received": "message", "subject": "s"}])
    assert settled
    assert seen.delivered


def test_reports_must_name_every_caused_result_type() -> None:
    collector = [
        {
            "received": "report",
            "policies": [
                {"policy_domain": "example.test", "result_types": ["starttls-not-supported"]}
            ],
        },
        {"ready": "collector"},
    ]
    want = {
        "example.test": {"starttls-not-supported", "certificate-not-trusted"},
        "testing.example.test": set(),
    }
    checks = {c.domain: c for c in check_reports(collector, want)}
    assert checks["example.test"].received
    assert checks["example.test"].missing == ("certificate-not-trusted",)
    assert not checks["example.test"].ok
    assert not checks["testing.example.test"].received
    assert not checks["testing.example.test"].ok


def test_compose_check_says_so_in_one_line_without_docker(tmp_path: Path) -> None:
    """Where no docker engine answers, the check skips with one line and exit 0."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    docker = fake_bin / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)
    run = subprocess.run(
        [str(LAB / "compose-check")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", "PYTHON": _python()},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("compose-check: skipped: no docker engine")


def _python() -> str:
    import sys

    return sys.executable


def test_check_output_is_json_free_table() -> None:
    """format_table is shared with `stsguard lab`: the check prints the same columns."""
    from lab.runner import format_table

    scenario = _row(Attack.NONE, PolicySetup.ENFORCE, tls_seen_before=False)
    seen, _ = observe("Q", "s", [], [{"received": "message", "subject": "s", "tls": True}])
    table = format_table([Outcome(scenario, seen)])
    assert table.splitlines()[0].split()[:2] == ["scenario", "attack"]
    assert "baseline-enforce" in table
    assert "ok" in table.split()
    json.dumps(Outcome(scenario, seen).as_json())
