"""The socketmap answer for one domain: its MTA-STS policy, DANE state and local override as a
Postfix TLS policy (`smtp_tls_policy_maps`). Pure.

| facts                                         | reply                                        |
|-----------------------------------------------|----------------------------------------------|
| override none/opportunistic/encrypt/verify    | ``OK none`` / ``may`` / ``encrypt`` / ``verify`` |
| override dane-only                            | ``OK dane-only``                             |
| DANE look-up failed (bogus, SERVFAIL)         | ``TEMP ...`` (RFC 7672 2.2: never MTA-STS)   |
| signed MX, usable TLSA on every MX host       | ``OK dane-only``                             |
| signed MX, signed TLSA on some MX hosts       | ``OK dane`` (Postfix checks each host)       |
| MTA-STS enforce                               | ``OK secure match=P1:P2 servername=hostname`` |
| MTA-STS testing                               | ``NOTFOUND `` (``tlsrpt``: ``OK may`` + policy) |
| no policy, mode none, failed fetch, no cache  | ``NOTFOUND `` (RFC 8461 5: as without policy) |

DANE comes before MTA-STS (RFC 8461 section 2). A cached policy (kept through a failed fetch,
STS-06) arrives here as the policy: the caller's `PolicyResult` already holds it.

Under the map name ``tlsrpt`` an MTA-STS answer also carries Postfix's TLSRPT attributes
(`TLSRPT_README`, Postfix >= 3.10): ``policy_type=sts policy_domain=D``, one
``mx_host_pattern=`` per pattern and one ``{ policy_string = line }`` per policy line. Postfix's
attribute grammar (`smtp_tls_policy.c`: tokens split at commas and white space outside balanced
braces) has no escape, so a policy line that could end or open an attribute (a brace, a control
character) is left out, never copied. ``policy_failure=`` is never sent: it makes Postfix fail
the delivery, and every answer here is one RFC 8461 lets delivery go ahead with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from mtasts.model import Mode, Policy, PolicyResult
from mtasts.parse import policy_domain
from relay.socketmap.netstring import MAX_REPLY
from relay.socketmap.protocol import NOTFOUND, Dialect, ok, temp


class DaneState(StrEnum):
    """What the MX and TLSA look-ups of a domain found (RFC 7672 2.2)."""

    OFF = "off"  # DNSSEC not trusted here, or not looked up
    NONE = "none"  # MX RRset not signed, or no MX host with signed TLSA
    SOME = "some"  # signed MX, signed TLSA on some MX hosts (or none of them usable)
    ALL = "all"  # signed MX, usable signed TLSA on every MX host
    TEMPFAIL = "tempfail"  # a look-up failed or did not validate: we do not know


@dataclass(frozen=True, slots=True)
class MapFacts:
    """Everything the answer depends on. `override` is `[domains."x"].tls` (mta-sts: none)."""

    domain: str
    sts: PolicyResult | None = None
    dane: DaneState = DaneState.OFF
    dane_reason: str = ""
    override: str = "mta-sts"


@dataclass(frozen=True, slots=True)
class MapAnswer:
    """The reply and what kind of answer it is (the metric label): secure, testing, no-policy,
    fetch-failed, dane, dane-only, override, temp, not-a-domain, unknown-map. `refused` are
    policy lines left out of the TLSRPT attributes."""

    reply: str
    kind: str
    refused: tuple[str, ...] = ()


OVERRIDE_LEVELS = {"none": "none", "opportunistic": "may", "encrypt": "encrypt", "verify": "verify"}
ANSWERED_BY_OVERRIDE = (*OVERRIDE_LEVELS, "dane-only")  # answers no look-up can change

# A policy line Postfix reads back as it was: printable ASCII without braces, not starting or
# ending in a space (Postfix strips those).
_SAFE_LINE = re.compile(r"[\x21-\x7a\x7c\x7e](?:[\x20-\x7a\x7c\x7e]*[\x21-\x7a\x7c\x7e])?")
_SAFE_PATTERN = re.compile(r"(?:\*\.)?[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")


def map_domain(key: str) -> str | None:
    """The domain a Postfix key names, or None for keys that are no plain domain: ``[host]``,
    ``[host]:port``, ``host:port``, IP addresses, ``.parent`` look-ups (STS-08)."""
    if key.startswith("."):
        return None
    return policy_domain(key)


def answer(facts: MapFacts, dialect: Dialect = Dialect.POSTFIX) -> MapAnswer:
    """The reply to Postfix for `facts.domain` (see the module table)."""
    if facts.override in OVERRIDE_LEVELS:
        return MapAnswer(ok(OVERRIDE_LEVELS[facts.override]), "override")
    if facts.override == "dane-only":
        return MapAnswer(ok("dane-only"), "override")
    if facts.dane is DaneState.TEMPFAIL:
        # RFC 7672 2.2: an unknown DANE state is a temporary failure, not "no DANE".
        return MapAnswer(temp(f"DANE look-up failed: {facts.dane_reason}"), "temp")
    if facts.dane is DaneState.ALL:
        return MapAnswer(ok("dane-only"), "dane-only")
    if facts.dane is DaneState.SOME:
        return MapAnswer(ok("dane"), "dane")
    policy = facts.sts.policy if facts.sts is not None else None
    if policy is None or policy.mode is Mode.NONE:
        failed = facts.sts is not None and facts.sts.failure is not None
        return MapAnswer(NOTFOUND, "fetch-failed" if failed else "no-policy")
    if policy.mode is Mode.TESTING:
        if dialect is Dialect.TLSRPT:
            return _sized("may", facts.domain, policy, "testing")
        return MapAnswer(NOTFOUND, "testing")
    level = f"secure match={':'.join(postfix_match(p) for p in _patterns(policy))}"
    level += " servername=hostname"
    if dialect is Dialect.TLSRPT:
        return _sized(level, facts.domain, policy, "secure")
    return _fitting(MapAnswer(ok(level), "secure"))


def postfix_match(pattern: str) -> str:
    """An MTA-STS `mx` pattern as Postfix's ``match=`` takes it: ``*.example.net`` is
    ``.example.net`` (Postfix's form for "a subdomain of"; it admits deeper names too)."""
    return pattern[1:] if pattern.startswith("*.") else pattern


def _patterns(policy: Policy) -> list[str]:
    return [p for p in policy.mx if _SAFE_PATTERN.fullmatch(p)]


def tlsrpt_attributes(domain: str, policy: Policy) -> tuple[str, tuple[str, ...]]:
    """Postfix's TLSRPT attributes for an MTA-STS policy, and the policy lines left out."""
    parts = ["policy_type=sts", f"policy_domain={domain}"]
    parts += [f"mx_host_pattern={p}" for p in _patterns(policy)]
    refused: list[str] = []
    for line in policy.policy_strings:
        line = line.strip()
        if _SAFE_LINE.fullmatch(line):
            parts.append(f"{{ policy_string = {line} }}")
        else:
            refused.append(line)
    return " ".join(parts), tuple(refused)


def _sized(level: str, domain: str, policy: Policy, kind: str) -> MapAnswer:
    """`level` with the TLSRPT attributes; without them when they would pass Postfix's limit."""
    attributes, refused = tlsrpt_attributes(domain, policy)
    full = MapAnswer(ok(f"{level} {attributes}"), kind, refused)
    if len(full.reply.encode()) <= MAX_REPLY:
        return full
    if kind == "testing":
        return MapAnswer(NOTFOUND, kind)
    return _fitting(MapAnswer(ok(level), kind))


def _fitting(found: MapAnswer) -> MapAnswer:
    if len(found.reply.encode()) <= MAX_REPLY:
        return found
    return MapAnswer(temp("policy too large for a socketmap reply"), "temp")
