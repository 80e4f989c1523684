"""The code stays ruff-clean and mypy-clean, and the packages keep their import boundaries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("mtasts", "detect", "tlsrpt_emit")


def test_ruff_clean() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_clean() -> None:
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", LIBRARIES)
def test_libraries_do_not_import_relay_lab_or_each_other(package: str) -> None:
    forbidden = {"relay", "lab", *LIBRARIES} - {package}
    for path in (ROOT / package).rglob("*.py"):
        wrong = imported_packages(path) & forbidden
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_daemon_never_imports_a_cli_module() -> None:
    """The running relay (everything in relay/ outside relay/cli/) never imports relay.cli."""
    for path in (ROOT / "relay").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "relay").parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            wrong = [n for n in names if n == "relay.cli" or n.startswith("relay.cli.")]
            assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"
