"""Typed values of TLS-RPT: result types and the one result each delivery session emits."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class ResultType(StrEnum):
    """RFC 8460 section 4.3 result types."""

    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    VALIDATION_FAILURE = "validation-failure"
    TLSA_INVALID = "tlsa-invalid"
    DNSSEC_INVALID = "dnssec-invalid"
    DANE_REQUIRED = "dane-required"
    STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
    STS_POLICY_INVALID = "sts-policy-invalid"
    STS_WEBPKI_INVALID = "sts-webpki-invalid"


def result_type_of(value: str) -> ResultType:
    """`value` as a `ResultType`, never raising: a string that is none (a row written by another
    version, say) is ``validation-failure``, RFC 8460 4.3's failure "not matching a category
    above". The code spells only members (tests/test_result_types.py holds that)."""
    try:
        return ResultType(value)
    except ValueError:
        return ResultType.VALIDATION_FAILURE


class PolicyType(StrEnum):
    """RFC 8460 section 4.4 policy-type values."""

    STS = "sts"
    TLSA = "tlsa"
    NO_POLICY_FOUND = "no-policy-found"


@dataclass(frozen=True, slots=True)
class SessionResult:
    """The TLS outcome of one delivery session (or one policy look-up failure) to one MX.

    `result_type` is None on success. `when` is a Unix timestamp; the UTC day it falls in is the
    report it is counted in. `mx_host` is the MX host name (the policy's matching pattern is derived
    from `policy_strings` when the report is built).
    """

    policy_domain: str
    policy_type: PolicyType
    policy_strings: tuple[str, ...]
    when: float
    mx_host: str = ""
    receiving_ip: str = ""
    sending_mta_ip: str = ""
    receiving_mx_helo: str = ""
    result_type: ResultType | None = None
    failure_reason_code: str = ""
    additional_information: str = ""

    @property
    def success(self) -> bool:
        return self.result_type is None


class ResultSink(Protocol):
    """Where the relay hands each session result; `tlsrpt_emit` counts them."""

    def record(self, result: SessionResult) -> None: ...


class MemorySink:
    """A sink that keeps results in a list (tests, and set-ups without TLS-RPT)."""

    def __init__(self) -> None:
        self.results: list[SessionResult] = []

    def record(self, result: SessionResult) -> None:
        self.results.append(result)


@dataclass(frozen=True, slots=True)
class PolicyKey:
    """What a report's `policies[]` entry is counted under: one UTC day, domain and policy."""

    day: datetime.date
    policy_domain: str
    policy_type: PolicyType
    policy_strings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FailureKey:
    """The fields that make one `failure-details[]` entry (RFC 8460 section 4.4)."""

    result_type: ResultType
    sending_mta_ip: str = ""
    receiving_mx_hostname: str = ""
    receiving_mx_helo: str = ""
    receiving_ip: str = ""
    failure_reason_code: str = ""
    additional_information: str = ""


# An absolute URI (RFC 3986 4.3): a scheme, ":", and no spaces or characters a URI never holds.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s\"<>\\^`{|}]+$")


def is_uri(text: str) -> bool:
    """True when `text` is an absolute URI (what `additional-information` may hold)."""
    return bool(_URI.match(text))


def split_diagnostics(reason_code: str, additional: str) -> tuple[str, str]:
    """`(failure-reason-code, additional-information)` as RFC 8460 4.4 wants them.

    `additional-information` is a URI pointing at more detail; free text (``ehlo-refused: 502
    5.5.2 ...``) is a diagnostic, so it joins the reason code (which is "a text field to include
    a TLS-related error code or error message").
    """
    additional = additional.strip()
    if not additional or is_uri(additional):
        return reason_code, additional
    if not reason_code or reason_code in additional:
        return additional, ""
    return f"{reason_code}: {additional}", ""


@dataclass(frozen=True, slots=True)
class PolicyCounts:
    """The counts of one policy on one day: successes and failed sessions per failure detail."""

    key: PolicyKey
    successes: int
    failures: tuple[tuple[FailureKey, int], ...] = ()

    @property
    def failure_total(self) -> int:
        return sum(count for _, count in self.failures)


@dataclass(frozen=True, slots=True)
class ReportPolicy:
    """One `policies[]` entry of a report."""

    policy_type: PolicyType
    policy_strings: tuple[str, ...]
    policy_domain: str
    mx_hosts: tuple[str, ...]
    successes: int
    failures: tuple[tuple[FailureKey, int], ...] = ()
    # A report read from another sender: its `total-failure-session-count`, which need not be
    # the sum of its failure-details (failure types may overlap, RFC 8460 4.4).
    reported_failures: int | None = None

    @property
    def failure_total(self) -> int:
        if self.reported_failures is not None:
            return self.reported_failures
        return sum(count for _, count in self.failures)


@dataclass(frozen=True, slots=True)
class Report:
    """One aggregate report: one policy domain, one full UTC day (RFC 8460 section 4)."""

    organization_name: str
    start: datetime.datetime
    end: datetime.datetime
    contact_info: str
    report_id: str
    policy_domain: str
    submitter: str
    policies: tuple[ReportPolicy, ...]


def utc_day(when: float) -> datetime.date:
    """The UTC day a Unix timestamp falls in: the report it is counted in (RFC 8460 4.1)."""
    return datetime.datetime.fromtimestamp(when, datetime.UTC).date()
