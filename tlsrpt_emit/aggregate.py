"""Pure report building: a day's counts in, one `Report` per policy domain out (RFC 8460 4.1)."""

from __future__ import annotations

import datetime
import hashlib
import re
import urllib.parse
from collections.abc import Callable, Iterable

from tlsrpt_emit.model import PolicyCounts, PolicyType, Report, ReportPolicy
from tlsrpt_emit.names import a_label

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


# local@domain, no spaces, brackets or separators (a display name or a list is not an address)
_ADDRESS = re.compile(r"^[^\s@<>(),;:\\\"\[\]]+@[^\s@<>(),;:\\\"\[\]]+$")


def contact_address(contact_info: str) -> str:
    """`contact_info` as RFC 8460 4.4 wants it: an e-mail address (``tlsrpt@example.net``).

    A ``mailto:`` URI, as earlier versions wrote it, is read as its address. Raises `ValueError`
    naming the problem when it is not an address.
    """
    text = contact_info.strip()
    if text[:7].lower() == "mailto:":
        text = urllib.parse.unquote(text[7:].split("?", 1)[0])
    if not _ADDRESS.match(text):
        raise ValueError(f"{contact_info!r} is not an e-mail address (like tlsrpt@example.net)")
    local, _, domain = text.rpartition("@")
    return f"{local}@{a_label(domain)}"


def submitter_for(contact_info: str) -> str:
    """The submitter: the domain of the contact-info address, in A-labels (RFC 8460 5.3)."""
    return a_label(contact_info.strip().rpartition("@")[2].split("?", 1)[0])


def stable_report_ids(day: datetime.date, submitter: str) -> ReportIdFactory:
    """Report ids like ``2026-11-28T00:00:00Z_example.org_5f0c...`` made from the day, the
    policy domain and the submitter: unique per report, and `tlsrpt show` gives the id that
    `tlsrpt send` (or the daily sender, or another relay of a fleet) sends."""

    def make(domain: str) -> str:
        digest = hashlib.sha256(f"{submitter}!{domain}!{day.isoformat()}".encode()).hexdigest()
        return f"{day.isoformat()}T00:00:00Z_{domain}_{digest[:16]}"

    return make


def build_reports(
    rows: Iterable[PolicyCounts],
    *,
    day: datetime.date,
    organization_name: str,
    contact_info: str,
    report_id_factory: ReportIdFactory | None = None,
) -> list[Report]:
    """One report per policy domain with counts on `day` (other days' rows are ignored).

    `contact_info` is an e-mail address (see `contact_address`); its domain is the submitter.
    """
    who = submitter_for(contact_info)
    make_id = report_id_factory or stable_report_ids(day, who)
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
