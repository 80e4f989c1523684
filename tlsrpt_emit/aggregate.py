"""Pure report building: a day's counts in, one `Report` per policy domain out (RFC 8460 4.1)."""

from __future__ import annotations

import datetime
import random
import urllib.parse
from collections.abc import Callable, Iterable

from tlsrpt_emit.model import PolicyCounts, PolicyType, Report, ReportPolicy

ReportIdFactory = Callable[[str], str]


def day_range(day: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
    """00:00:00Z of `day` and of the next day: the full UTC day a report covers (RPT-03)."""
    start = datetime.datetime.combine(day, datetime.time(0, 0), tzinfo=datetime.UTC)
    return start, start + datetime.timedelta(days=1)


def mx_patterns(policy_strings: Iterable[str]) -> tuple[str, ...]:
    """The `mx:` values of an STS policy given one line per element."""
    found: list[str] = []
    for line in policy_strings:
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() == "mx" and value.strip():
            found.append(value.strip())
    return tuple(found)


def submitter_for(contact_info: str, submitter: str = "") -> str:
    """`[tlsrpt].submitter` if set, else the domain of `contact_info` (mailto or URL)."""
    if submitter:
        return submitter.lower().rstrip(".")
    text = contact_info.strip()
    if text.lower().startswith("mailto:"):
        text = urllib.parse.unquote(text[7:].split("?", 1)[0])
    if "@" in text:
        return text.rpartition("@")[2].lower().rstrip(".")
    try:
        host = urllib.parse.urlsplit(text).hostname
    except ValueError:
        host = None
    return (host or text).lower().rstrip(".")


def random_report_ids(day: datetime.date, seed: int | None = None) -> ReportIdFactory:
    """Report ids like ``2026-11-28T00:00:00Z_example.org_5f0c...``; seeded for tests."""
    rng: random.Random = random.SystemRandom() if seed is None else random.Random(seed)

    def make(domain: str) -> str:
        return f"{day.isoformat()}T00:00:00Z_{domain}_{rng.getrandbits(64):016x}"

    return make


def build_reports(
    rows: Iterable[PolicyCounts],
    *,
    day: datetime.date,
    organization_name: str,
    contact_info: str,
    submitter: str = "",
    report_id_factory: ReportIdFactory | None = None,
    seed: int | None = None,
) -> list[Report]:
    """One report per policy domain with counts on `day` (other days' rows are ignored)."""
    make_id = report_id_factory or random_report_ids(day, seed)
    start, end = day_range(day)
    by_domain: dict[str, list[ReportPolicy]] = {}
    for row in rows:
        if row.key.day != day or (row.successes == 0 and not row.failures):
            continue
        key = row.key
        mx = mx_patterns(key.policy_strings) if key.policy_type is PolicyType.STS else ()
        by_domain.setdefault(key.policy_domain, []).append(
            ReportPolicy(
                policy_type=key.policy_type,
                policy_strings=key.policy_strings,
                policy_domain=key.policy_domain,
                mx_hosts=mx,
                successes=row.successes,
                failures=row.failures,
            )
        )
    who = submitter_for(contact_info, submitter)
    return [
        Report(
            organization_name=organization_name,
            start=start,
            end=end,
            contact_info=contact_info,
            report_id=make_id(domain),
            policy_domain=domain,
            submitter=who,
            policies=tuple(
                sorted(by_domain[domain], key=lambda p: (str(p.policy_type), p.policy_strings))
            ),
        )
        for domain in sorted(by_domain)
    ]
