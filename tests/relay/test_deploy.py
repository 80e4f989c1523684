"""The shipped systemd unit: valid, hardened to "OK", and what the README promises of it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from relay.config import RelayConfig, load_config
from tests.cli import ROOT

UNIT = ROOT / "relay" / "deploy" / "stsguard.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def unit_lines() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def test_unit_settings_the_relay_relies_on() -> None:
    keys = unit_lines()
    assert keys["Type"] == ["notify"]
    assert keys["ExecReload"] == ["kill -HUP $MAINPID"]
    assert keys["SyslogLevelPrefix"] == ["true"]
    assert int(keys["LimitNOFILE"][0]) >= 65536
    assert keys["ExecStart"] == [
        "/opt/stsguard/bin/stsguard relay --config /etc/stsguard/stsguard.toml"
    ]


# Seconds a stop may take beyond [relay].stop_timeout: intake processes, report state, exit.
STOP_MARGIN = 15


def test_systemd_waits_longer_than_the_relay_drains() -> None:
    """TimeoutStopSec equal to stop_timeout let systemd SIGKILL a relay still stopping cleanly
    (deliveries cut off are sent again after the restart)."""
    [timeout] = unit_lines()["TimeoutStopSec"]
    assert re.fullmatch(r"[0-9]+", timeout), timeout
    drains = [RelayConfig().stop_timeout]
    for example in (ROOT / "stsguard.example.toml", ROOT / "relay/deploy/stsguard.example.toml"):
        drains.append(load_config(example).relay.stop_timeout)
    assert int(timeout) >= max(drains) + STOP_MARGIN, (timeout, drains)


def local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's stsguard (verify wants it to exist)."""
    stsguard = Path(sys.executable).with_name("stsguard")
    assert stsguard.exists(), stsguard
    text = UNIT.read_text().replace("/opt/stsguard/bin/stsguard", str(stsguard))
    copy = tmp_path / "stsguard.service"
    copy.write_text(text)
    return copy


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert ANALYZE is not None
    run = subprocess.run(
        [ANALYZE, "verify", str(local_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "stsguard.service" not in run.stderr, run.stderr


@needs_analyze
def test_systemd_analyze_security_is_ok(tmp_path: Path) -> None:
    assert ANALYZE is not None
    run = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(local_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r"Overall exposure level for stsguard\.service: ([\d.]+) (\w+)", run.stdout)
    assert found, run.stdout + run.stderr
    assert float(found.group(1)) <= 2.0, run.stdout
    assert found.group(2) == "OK"


@pytest.mark.slow
def test_wheel_ships_the_unit_and_the_example_config(stsguard_wheel: Path) -> None:
    """Installed from a wheel, `stsguard example-config` and `example-unit` have their files."""
    wheel = stsguard_wheel
    with zipfile.ZipFile(wheel) as zf:
        shipped = {name: zf.read(name) for name in zf.namelist() if "/deploy/" in name}
    assert shipped["relay/deploy/stsguard.service"] == UNIT.read_bytes()
    example = (ROOT / "stsguard.example.toml").read_bytes()
    assert shipped["relay/deploy/stsguard.example.toml"] == example  # the file, not a link
