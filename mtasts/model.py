"""Typed values of MTA-STS: the TXT record, the policy, and what the service answers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mtasts.match import policy_allows


class Mode(StrEnum):
    """The policy mode (RFC 8461 section 3.2)."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


class PolicySource(StrEnum):
    """Where the policy that `PolicyService.get` answered with came from."""

    FRESH = "fresh"  # fetched during this call
    CACHED = "cached"  # from the cache (TXT id unchanged, or live look-up failed: STS-06)
    NONE = "none"  # the domain has no usable policy


@dataclass(frozen=True, slots=True)
class StsRecord:
    """A parsed `_mta-sts.<domain>` TXT record (RFC 8461 section 3.1)."""

    id: str
    extensions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy file (RFC 8461 section 3.2). `text` is the policy as served."""

    mode: Mode
    max_age: int
    mx: tuple[str, ...]
    text: str = ""

    @property
    def policy_strings(self) -> tuple[str, ...]:
        """The policy one line per element, as TLS-RPT's `policy-string` wants it (RFC 8460 4.4)."""
        return tuple(line for line in self.text.replace("\r\n", "\n").split("\n") if line.strip())

    def allows(self, host: str) -> bool:
        """True when the MX host `host` matches one of the `mx` patterns (STS-09)."""
        return policy_allows(self, host)


@dataclass(frozen=True, slots=True)
class PolicyFailure:
    """Why a policy could not be had, as an RFC 8460 result type plus plain words.

    `result_type` is one of ``sts-policy-fetch-error``, ``sts-policy-invalid``,
    ``sts-webpki-invalid``.
    """

    result_type: str
    message: str


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """What `PolicyService.get(domain)` answers: the policy to apply, or None, and why."""

    domain: str
    policy: Policy | None
    source: PolicySource
    record: StsRecord | None = None
    failure: PolicyFailure | None = None
    fetched_at: float | None = None
    expires_at: float | None = None
