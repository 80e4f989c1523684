"""MX host matching against a policy's `mx` patterns (RFC 8461 section 4.1): pure."""

from __future__ import annotations

from typing import Protocol

from mtasts.names import a_label


class HasMxPatterns(Protocol):
    """A policy as matching needs it (`mtasts.model.Policy`): its ``mx`` patterns. A protocol,
    so this module does not import the model that imports it."""

    @property
    def mx(self) -> tuple[str, ...]: ...


def normalize_host(host: str) -> str:
    """Lower-case A-labels (IDNA 2008, UTS 46), without the trailing dot (IDN-01).

    A name that is not a valid IDN is only lower-cased: it then matches no A-label pattern.
    """
    host = host.strip()
    if host.startswith("*."):
        rest = a_label(host[2:])
        return "*." + (rest if rest is not None else host[2:].lower().rstrip("."))
    found = a_label(host)
    return found if found is not None else host.lower().rstrip(".")


def mx_matches(pattern: str, host: str) -> bool:
    """True when `host` matches `pattern`; ``*.`` covers exactly one leftmost label (STS-09)."""
    pattern, host = normalize_host(pattern), normalize_host(host)
    if not pattern or not host:
        return False
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and first != "*" and rest == pattern[2:]
    return host == pattern


def policy_allows(policy: HasMxPatterns, host: str) -> bool:
    """True when `host` matches one of the policy's `mx` patterns."""
    return any(mx_matches(pattern, host) for pattern in policy.mx)
