"""MX host matching against a policy's `mx` patterns (RFC 8461 section 4.1): pure."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtasts.model import Policy


def normalize_host(host: str) -> str:
    """Lower-case, without the trailing dot; a U-label name becomes its A-label form."""
    host = host.strip().rstrip(".").lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return host
    return host


def mx_matches(pattern: str, host: str) -> bool:
    """True when `host` matches `pattern`; ``*.`` covers exactly one leftmost label (STS-09)."""
    pattern, host = normalize_host(pattern), normalize_host(host)
    if not pattern or not host:
        return False
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and first != "*" and rest == pattern[2:]
    return host == pattern


def policy_allows(policy: Policy, host: str) -> bool:
    """True when `host` matches one of the policy's `mx` patterns."""
    return any(mx_matches(pattern, host) for pattern in policy.mx)
