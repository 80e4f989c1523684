"""Manual pages: made from the argument parser, kept current in man/, rendered by man(1)
without warnings, shipped in the wheel under share/man/man1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from relay.cli import COMMANDS, build_parser
from relay.cli.man import pages
from tests.cli import ROOT, run_cli

MAN = shutil.which("man")


def test_the_pages_in_man_are_current() -> None:
    made = pages(build_parser())
    assert set(made) == {"stsguard.1", *(f"stsguard-{name}.1" for name in COMMANDS)}
    shipped = {p.name: p.read_text() for p in (ROOT / "man").glob("*.1")}
    stale = sorted(
        name for name in made.keys() | shipped.keys() if made.get(name) != shipped.get(name)
    )
    assert not stale, f"run `stsguard man --write man` (stale: {', '.join(stale)})"


@pytest.mark.skipif(MAN is None, reason="man-db is not installed")
@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "man").glob("*.1")))
def test_man_renders_each_page_without_warnings(page: str) -> None:
    assert MAN is not None
    run = subprocess.run(
        [MAN, "--warnings=all", "-l", str(ROOT / "man" / page)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": ""},
        timeout=60,
        check=False,
    )
    assert (run.returncode, run.stderr) == (0, "")
    assert "SYNOPSIS" in run.stdout


def test_one_page_to_stdout() -> None:
    run = run_cli("man", "queue")
    assert run.returncode == 0
    assert run.stdout == (ROOT / "man" / "stsguard-queue.1").read_text()
    assert run_cli("man", "nope").stderr == "stsguard: error: man: no command 'nope'\n"


@pytest.mark.slow
def test_wheel_ships_the_pages_and_man_finds_them_in_a_venv(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    run = subprocess.run(
        [*pip, "--disable-pip-version-check", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    [wheel] = tmp_path.glob("stsguard-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = {n.rpartition("/share/man/man1/")[2]: n for n in zf.namelist() if ".data/" in n}
        for page in (ROOT / "man").glob("*.1"):
            assert zf.read(names[page.name]) == page.read_bytes()
    if MAN is None:
        return
    # Installed into a prefix as pip does (`pip install --prefix`), man finds the pages from the
    # PATH entry of its bin/, as for /opt/stsguard/bin.
    prefix = tmp_path / "opt"
    # --ignore-installed: never uninstall the stsguard this test runs from (pip would, by name).
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    install.append("--ignore-installed")
    run = subprocess.run(
        [*install, "--disable-pip-version-check", "--prefix", str(prefix), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert (prefix / "share" / "man" / "man1" / "stsguard-queue.1").exists()
    env = {**os.environ, "PATH": f"{prefix / 'bin'}:/usr/bin:/bin", "MANWIDTH": "80"}
    env.pop("MANPATH", None)
    found = subprocess.run(
        [MAN, "-w", "stsguard-queue"], capture_output=True, text=True, env=env, check=False
    )
    assert found.stdout.strip() == str(prefix / "share" / "man" / "man1" / "stsguard-queue.1")
