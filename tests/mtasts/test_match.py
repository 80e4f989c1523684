"""STS-09: MX host matching against policy patterns (RFC 8461 section 4.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtasts.match import mx_matches, policy_allows
from mtasts.model import Mode, Policy


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("mx.example.com", "mx.example.com", True),
        ("mx.example.com", "MX.Example.COM.", True),
        ("MX.example.com.", "mx.example.com", True),
        ("mx.example.com", "mx2.example.com", False),
        ("mx.example.com", "a.mx.example.com", False),
        ("*.example.com", "mx.example.com", True),
        ("*.example.com", "MX.EXAMPLE.COM.", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "mx.example.com.evil", False),
        ("*.example.com", "mxexample.com", False),
        ("*.example.com", "*.example.com", False),
        ("*.b.example.com", "a.b.example.com", True),
        ("", "mx.example.com", False),
        ("mx.example.com", "", False),
    ],
)
def test_sts09_mx_pattern_match(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


def test_sts09_policy_allows_any_pattern() -> None:
    policy = Policy(Mode.ENFORCE, 86400, ("mail.example.com", "*.example.net"))
    assert policy_allows(policy, "mail.example.com")
    assert policy.allows("backup.example.net.")
    assert not policy.allows("example.net")
    assert not policy.allows("mail.example.org")
    assert not Policy(Mode.NONE, 86400, ()).allows("mail.example.com")


_LABEL = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)


@settings(max_examples=200)
@given(st.lists(_LABEL, min_size=1, max_size=4), _LABEL)
def test_sts09_property_wildcard_covers_exactly_one_label(suffix: list[str], first: str) -> None:
    base = ".".join(suffix)
    assert mx_matches(f"*.{base}", f"{first}.{base}")
    assert not mx_matches(f"*.{base}", base)
    assert not mx_matches(f"*.{base}", f"{first}.{first}.{base}")
    assert mx_matches(base, base.upper() + ".")
