"""`stsguard lab` and unbound: DANE scenarios need it, and the lab says so when it is missing."""

from __future__ import annotations

import pytest

import lab.runner
from lab.runner import run_lab
from lab.unbound import MISSING


async def test_dane_lab_says_when_unbound_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lab.runner, "unbound_path", lambda: None)
    outcomes, _ = await run_lab(["baseline-dane-ee", "baseline-no-policy"])
    assert [o.scenario.name for o in outcomes] == ["baseline-no-policy"]
    assert all(o.ok for o in outcomes)
    err = capsys.readouterr().err
    assert MISSING in err
    assert "the DANE scenarios are not run" in err
