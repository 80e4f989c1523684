"""Every RFC 8460 result type spelled in the code is a member of `tlsrpt_emit.model.ResultType`.

The strings travel as `str` through `detect` and `mtasts` (which may not import `tlsrpt_emit`)
and become a `ResultType` in `relay`; a misspelling would only show when a report is built. So
the source of every package but the tests is read: a string literal in a result-type position
(``result_type=...``, compared with ``.result_type``, a constant named after a member), and any
literal a typo away from a member, must be a member.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from detect import dane, model, tls
from mtasts import errors
from tlsrpt_emit.model import ResultType, result_type_of

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("relay", "mtasts", "detect", "tlsrpt_emit", "lab", "bench")
MEMBERS = {str(m) for m in ResultType}
BY_CONSTANT_NAME = {m.name: str(m) for m in ResultType}


def _distance(a: str, b: str) -> int:
    """Levenshtein distance."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _spelled() -> Iterator[tuple[str, int, str, str]]:
    """(file, line, literal, why it must be a member) for each result-type literal."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            where = str(path.relative_to(ROOT))
            for node in ast.walk(tree):
                for value, why in _positions(node):
                    yield where, value.lineno, str(value.value), why
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and node.value not in MEMBERS
                    and any(_distance(node.value, m) <= 2 for m in MEMBERS)
                ):
                    yield where, node.lineno, str(node.value), "a typo away from a member"


def _positions(node: ast.AST) -> Iterator[tuple[ast.Constant, str]]:
    def literal(value: ast.AST | None) -> ast.Constant | None:
        ok = isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value
        return value if ok else None  # type: ignore[return-value]

    if isinstance(node, ast.keyword) and node.arg and node.arg.endswith("result_type"):
        if (found := literal(node.value)) is not None:
            yield found, f"{node.arg}="
    elif isinstance(node, ast.Compare):
        sides = [node.left, *node.comparators]
        named = any(
            (isinstance(s, ast.Attribute) and s.attr.endswith("result_type"))
            or (isinstance(s, ast.Name) and s.id.endswith("result_type"))
            for s in sides
        )
        for side in sides if named else ():
            if (found := literal(side)) is not None:
                yield found, "compared with a result type"
    elif isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            named = isinstance(target, ast.Name) and target.id in BY_CONSTANT_NAME
            if named and (found := literal(node.value)) is not None:
                yield found, f"the constant {ast.unparse(target)}"


SPELLED = list(_spelled())


def test_the_scan_sees_the_result_types_where_they_are_spelled() -> None:
    seen = {literal for _file, _line, literal, _why in SPELLED}
    # detect's, mtasts' and the lab's own spellings: the scan must find them to check them.
    assert {"starttls-not-supported", "certificate-host-mismatch", "dane-required"} <= seen
    assert {"sts-policy-fetch-error", "sts-webpki-invalid", "tlsa-invalid"} <= seen


@pytest.mark.parametrize(("where", "line", "literal", "why"), SPELLED)
def test_every_result_type_spelled_in_the_code_is_a_member(
    where: str, line: int, literal: str, why: str
) -> None:
    assert literal in MEMBERS, f"{where}:{line}: {literal!r} ({why}) is no RFC 8460 result type"


def test_the_constants_of_detect_and_mtasts_are_members() -> None:
    spelled = {
        *errors.RESULT_TYPES,
        model.STARTTLS_NOT_SUPPORTED,
        model.VALIDATION_FAILURE,
        tls.CERTIFICATE_EXPIRED,
        tls.CERTIFICATE_HOST_MISMATCH,
        tls.CERTIFICATE_NOT_TRUSTED,
        dane.TLSA_INVALID,
        dane.DNSSEC_INVALID,
        dane.DANE_REQUIRED,
    }
    assert spelled <= MEMBERS


def test_a_string_from_elsewhere_never_raises() -> None:
    """A row written by another version, say: RFC 8460 4.3's general failure."""
    assert result_type_of("certificate-expired") is ResultType.CERTIFICATE_EXPIRED
    assert result_type_of("no-such-type") is ResultType.VALIDATION_FAILURE
