"""relay/diagnostics/ serves only the CLI: delivery and the rest of the daemon never import it,
and it takes a domain's TLS rules from the destination policy, as delivery does."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_cli_imports_diagnostics() -> None:
    for path in (ROOT / "relay").rglob("*.py"):
        part = path.relative_to(ROOT / "relay").parts[0]
        if part in ("cli", "diagnostics"):
            continue
        wrong = {n for n in _imports(path) if n.startswith("relay.diagnostics")}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_diagnostics_compose_no_policy_of_their_own() -> None:
    """The hand-made compositions the destination policy replaced stay gone."""
    own = {"effective_policy", "dane_for_mx", "screen_mx", "EffectivePolicy"}
    for path in [*(ROOT / "relay" / "diagnostics").glob("*.py"), ROOT / "relay/cli/probe.py"]:
        tree = ast.parse(path.read_text(), str(path))
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not used & own, f"{path.relative_to(ROOT)} uses {sorted(used & own)}"
