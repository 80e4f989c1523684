"""After the lab, the relay's downgrade prevalence names each attacked MX host with its share:
every session to the garbling, refusing and injecting hosts shows it, none to the clean one."""

from __future__ import annotations

import asyncio

import pytest

from detect.prevalence import Measure, PrevalenceRow
from detect.prevalence_view import by_domain, by_host
from lab.runner import run_lab

pytestmark = pytest.mark.slow

SCENARIOS = ["garble-testing", "starttls-454-none", "inject-no-policy", "baseline-enforce"]


def test_the_lab_leaves_prevalence_naming_the_attacked_hosts() -> None:
    rows: list[PrevalenceRow] = []
    outcomes, _ = asyncio.run(run_lab(SCENARIOS, rows))
    assert all(o.ok for o in outcomes)
    hosts = {h.name: h for h in by_host(rows)}
    assert set(hosts) == {f"mx.{name}.lab.test" for name in SCENARIOS}

    garbled = hosts["mx.garble-testing.lab.test"]
    assert garbled.sessions >= 1
    assert garbled.share(Measure.GARBLED) == 1.0
    assert garbled.share(Measure.DOWNGRADED) == 1.0
    assert garbled.share(Measure.PLAINTEXT) == 1.0  # testing: delivered anyway, in the clear
    assert set(garbled.details[Measure.GARBLED]) == {"XXXXXXXA"}

    refused = hosts["mx.starttls-454-none.lab.test"]
    assert refused.share(Measure.REFUSED) == 1.0
    assert set(refused.details[Measure.REFUSED]) == {"454"}

    injected = hosts["mx.inject-no-policy.lab.test"]
    assert injected.share(Measure.INJECTED) == 1.0
    assert injected.counts[Measure.INJECTED_BYTES] >= injected.sessions

    clean = hosts["mx.baseline-enforce.lab.test"]
    assert clean.share(Measure.STARTTLS_OFFERED) == 1.0
    assert clean.share(Measure.DOWNGRADED) == 0.0
    # Worst first: the clean host comes last.
    assert by_host(rows)[-1].name == clean.name
    # Per recipient domain too: mail to the garbled domain was garbled every time.
    domains = {d.name: d for d in by_domain(rows)}
    assert domains["garble-testing.lab.test"].share(Measure.GARBLED) == 1.0
    assert domains["baseline-enforce.lab.test"].share(Measure.DOWNGRADED) == 0.0
