"""`stsguard lab`'s REQUIRETLS scenarios (RFC 8689): delivered only with the parameter seen at the
MX, bounced with 5.7.30 / 5.7.10 where no MX ever could take it, never in the clear."""

from __future__ import annotations

import asyncio

import pytest

from lab.runner import format_table, run_lab
from lab.scenarios import requiretls_scenarios

pytestmark = pytest.mark.slow


def test_rt02_rt03_requiretls_scenarios_come_out_as_expected() -> None:
    names = [s.name for s in requiretls_scenarios()]
    outcomes, _ = asyncio.run(run_lab(names))
    wrong = [o for o in outcomes if not o.ok]
    assert not wrong, "\n" + format_table(wrong) + "\n" + "\n".join(str(o.observed) for o in wrong)
    by_name = {o.scenario.name: o.observed for o in outcomes}
    assert by_name["requiretls-baseline-enforce"].requiretls  # MAIL FROM ... REQUIRETLS at the MX
    assert by_name["requiretls-mx-without-requiretls-enforce"].bounce == "5.7.30"
    assert by_name["requiretls-baseline-no-policy"].bounce == "5.7.10"
    for outcome in outcomes:
        assert not outcome.observed.delivered or outcome.observed.tls  # never in the clear
