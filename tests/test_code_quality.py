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


def test_only_the_cli_imports_lab() -> None:
    """The lab (test worlds, attackers) is reached from the command line only (`stsguard lab`),
    never from the running relay."""
    for path in (ROOT / "relay").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "relay").parts:
            continue
        assert "lab" not in imported_packages(path), f"{path.relative_to(ROOT)} imports lab"


# relay's layers (README "Layout"): a module may import modules of its own part, of the parts
# listed for it, and the base (relay's top-level modules: config, errors, log, metrics,
# decision, ...), which import only each other. Nothing else points up or sideways.
RELAY_PARTS: dict[str, frozenset[str] | None] = {
    "cli": None,  # a command may use any part
    "app": frozenset(
        {"intake", "queue", "delivery", "state", "socketmap", "preflight", "inbound", "startup"}
    ),
    "startup": frozenset({"preflight", "state"}),  # what can stop the start or warn about it
    "preflight": frozenset({"intake", "state"}),  # `check` loads files with intake's loaders
    "socketmap": frozenset({"delivery", "state"}),  # answers Postfix from the destination policy
    "diagnostics": frozenset({"delivery", "state"}),  # what `probe` and `policy` show
    "intake": frozenset({"queue"}),  # intake writes the spool
    "queue": frozenset({"delivery"}),  # the queue manager hands jobs to the deliverer
    "delivery": frozenset(),
    "inbound": frozenset(),  # TLS reports about our own domains: https endpoint, Maildir
    "state": frozenset(),
    "deploy": frozenset(),  # the systemd unit and example config shipped with the package
}
# Arrows that break the table today, each with why and where it should go.
LAYERING_EXCEPTIONS: set[tuple[str, str]] = set()


def relay_part(path: Path) -> str:
    """The part of relay/ a file belongs to: its sub-package, or its module name at the top."""
    parts = path.relative_to(ROOT / "relay").parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def relay_imports(path: Path) -> set[str]:
    """The parts of relay/ that `path` imports (at module level or inside a function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        for module in modules:
            names = module.split(".")
            if names[0] == "relay" and len(names) > 1:
                found.add(names[1])
    return found


def test_relay_layers_only_point_down() -> None:
    packages = {p.name for p in (ROOT / "relay").iterdir() if (p / "__init__.py").exists()}
    unknown = packages - set(RELAY_PARTS)
    assert not unknown, f"add {sorted(unknown)} to RELAY_PARTS (and README's layout table)"
    wrong = []
    for path in sorted((ROOT / "relay").rglob("*.py")):
        part = relay_part(path)
        allowed = RELAY_PARTS.get(part, frozenset())
        if allowed is None:
            continue
        for target in sorted(relay_imports(path) - {part}):
            if target not in RELAY_PARTS or target in allowed:
                continue  # the base, or a part listed for this one
            if (part, target) not in LAYERING_EXCEPTIONS:
                wrong.append(f"{path.relative_to(ROOT)} ({part}) imports relay.{target}")
    assert not wrong, "\n".join(wrong)


def test_the_layering_exceptions_are_still_needed() -> None:
    """An exception that no import needs any more is taken out of the list."""
    used = {
        (relay_part(path), target)
        for path in (ROOT / "relay").rglob("*.py")
        for target in relay_imports(path)
    }
    assert used >= LAYERING_EXCEPTIONS


def test_mtasts_modules_form_no_import_cycle() -> None:
    """mtasts/ imports only point one way (model.py imports match.py, never the reverse)."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "mtasts").glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        graph[path.stem] = {
            node.module.split(".")[1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("mtasts.")
        }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, set()) - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False

    cycles = sorted(m for m in graph if reaches(m, m, set()))
    assert not cycles, f"import cycles through {cycles}"


# Size limits for the program in relay/ (README "Layout"): a file that grows past them has a part
# waiting to be named; a function past them has steps waiting to be named.
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_relay_files_and_functions_stay_small() -> None:
    too_big = []
    for path in sorted((ROOT / "relay").rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(ROOT)
        lines = text.count("\n")
        if lines > MAX_FILE_LINES:
            too_big.append(f"{name}: {lines} lines (at most {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(
                        f"{name}:{node.lineno} {node.name}: {length} lines "
                        f"(at most {MAX_FUNCTION_LINES})"
                    )
    assert not too_big, "\n".join(too_big)
