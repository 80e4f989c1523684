"""Manual pages: made from the argument parser, kept current in man/, rendered by man(1)
without warnings, shipped in the wheel under share/man/man1."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from relay.cli import build_parser
from relay.cli.man import pages
from tests.cli import ROOT, run_cli

MAN = shutil.which("man")


def test_the_pages_in_man_are_current() -> None:
    """A page for every command, naming every option the parser has (a help text reworded
    since the pages were made is no failure; a new command or option is)."""
    parser = build_parser()
    made = pages(parser)
    shipped = {p.name: p.read_text() for p in (ROOT / "man").glob("*.1")}
    regenerate = "run `stsguard man --write man` and commit man/"
    assert set(shipped) == set(made), regenerate
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        page = shipped[f"stsguard-{name}.1"]
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag.replace("-", "\\-") in page, f"{name} {flag}: {regenerate}"


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
def test_wheel_ships_the_pages_and_man_finds_them_in_a_venv(
    tmp_path: Path, stsguard_wheel: Path
) -> None:
    wheel = stsguard_wheel
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
