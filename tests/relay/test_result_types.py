"""Every RFC 8460 result type the libraries spell on their own is a `ResultType` member.

`detect` and `mtasts` may not import `tlsrpt_emit` (package boundaries), so they keep strings; the
relay turns them into `ResultType` where they meet (`tlsrpt_emit.model.result_type_of`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import detect
import mtasts
from tlsrpt_emit.model import ResultType, result_type_of

MEMBERS = {str(member) for member in ResultType}


def _named_constants() -> list[tuple[str, str, str]]:
    """(file, name, value) of module-level string constants in detect/ and mtasts/ whose value
    is spelled like a result type (a ResultType value, or one of its words with a typo)."""
    found: list[tuple[str, str, str]] = []
    words = {w for value in MEMBERS for w in value.split("-")}
    for package in (detect, mtasts):
        for path in sorted(Path(package.__path__[0]).glob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)):
                    continue
                value = node.value.value
                if not isinstance(value, str) or "-" not in value or " " in value:
                    continue
                name = node.targets[0].id if isinstance(node.targets[0], ast.Name) else ""
                if name.isupper() and set(value.split("-")) <= words:
                    found.append((path.name, name, value))
    return found


def test_the_scan_finds_the_libraries_result_types() -> None:
    names = {name for _, name, _ in _named_constants()}
    assert {"TLSA_INVALID", "DNSSEC_INVALID", "DANE_REQUIRED", "FETCH_ERROR"} <= names
    assert {"CERTIFICATE_EXPIRED", "STARTTLS_NOT_SUPPORTED", "VALIDATION_FAILURE"} <= names


@pytest.mark.parametrize(("file", "name", "value"), _named_constants())
def test_library_constant_is_a_result_type(file: str, name: str, value: str) -> None:
    assert value in MEMBERS, f"{file}: {name} = {value!r} is not an RFC 8460 result type"


def test_an_unknown_string_never_raises() -> None:
    assert result_type_of("certificate-expired") is ResultType.CERTIFICATE_EXPIRED
    assert result_type_of("no-such-type") is ResultType.VALIDATION_FAILURE
