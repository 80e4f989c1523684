"""Pure rendering of a `Report`: RFC 8460 JSON (4.4), file name (5.1), gzip (5.2), mail (5.3).

Also the reverse, `parse_report_json`, which reads `mx-host` as a string or a list (erratum 6241).
"""

from __future__ import annotations

import datetime
import email.policy
import email.utils
import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import dkim

from tlsrpt_emit.errors import MailDeliveryError, ReportFormatError
from tlsrpt_emit.model import (
    FailureKey,
    PolicyType,
    Report,
    ReportPolicy,
    ResultType,
    split_diagnostics,
)
from tlsrpt_emit.names import a_label

MEDIA_TYPE_GZIP = "application/tlsrpt+gzip"

# Signed by the DKIM signature of a report mail (RFC 8460 5.3 needs the two TLS-Report headers).
SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "TLS-Report-Domain",
    "TLS-Report-Submitter",
    "TLS-Required",
    "MIME-Version",
    "Content-Type",
)


def _rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _failure_dict(f: FailureKey, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {"result-type": str(f.result_type)}
    # Addresses and names are left out when unknown: a policy fetch error has no receiving MX.
    if f.sending_mta_ip:
        out["sending-mta-ip"] = f.sending_mta_ip
    if f.receiving_mx_hostname:
        out["receiving-mx-hostname"] = f.receiving_mx_hostname
    if f.receiving_mx_helo:
        out["receiving-mx-helo"] = f.receiving_mx_helo
    if f.receiving_ip:
        out["receiving-ip"] = f.receiving_ip
    out["failed-session-count"] = count
    # 4.4: additional-information is a URI; free text (counts stored before) becomes the reason.
    reason_code, additional = split_diagnostics(f.failure_reason_code, f.additional_information)
    if additional:
        out["additional-information"] = additional
    # RPT-05: always give a reason code; the result type when nothing more specific is known.
    out["failure-reason-code"] = reason_code or str(f.result_type)
    return out


def _policy_dict(p: ReportPolicy) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "policy-type": str(p.policy_type),
        "policy-string": list(p.policy_strings),
        "policy-domain": a_label(p.policy_domain),  # IDN-01: A-labels, as in the file name
    }
    if p.mx_hosts:
        policy["mx-host"] = list(p.mx_hosts)  # RFC 8460 4.4: a JSON array of strings
    return {
        "policy": policy,
        "summary": {
            "total-successful-session-count": p.successes,
            "total-failure-session-count": p.failure_total,
        },
        "failure-details": [_failure_dict(f, n) for f, n in p.failures],
    }


def report_to_dict(report: Report) -> dict[str, Any]:
    """The report as the RFC 8460 section 4.4 JSON object."""
    return {
        "organization-name": report.organization_name,
        "date-range": {
            "start-datetime": _rfc3339(report.start),
            "end-datetime": _rfc3339(report.end),
        },
        "contact-info": report.contact_info,
        "report-id": report.report_id,
        "policies": [_policy_dict(p) for p in report.policies],
    }


def render_json(report: Report, *, indent: int | None = None) -> bytes:
    """UTF-8 I-JSON (RFC 7493): no duplicate keys, integers only for counts."""
    return json.dumps(report_to_dict(report), ensure_ascii=False, indent=indent).encode()


def gzip_report(data: bytes) -> bytes:
    """gzip with a zero timestamp, so the same report gives the same bytes (RPT-08)."""
    return gzip.compress(data, mtime=0)


def report_filename(report: Report, *, gzipped: bool = True) -> str:
    """``submitter!policy-domain!begin-unix!end-unix!unique.json.gz`` (RPT-07)."""
    unique = hashlib.sha256(report.report_id.encode()).hexdigest()[:16]
    return "!".join(
        [
            a_label(report.submitter),
            a_label(report.policy_domain),
            str(int(report.start.timestamp())),
            str(int(report.end.timestamp())),
            unique,
        ]
    ) + (".json.gz" if gzipped else ".json")


def report_subject(report: Report) -> str:
    return (
        f"Report Domain: {a_label(report.policy_domain)} "
        f"Submitter: {a_label(report.submitter)} Report-ID: <{report.report_id}>"
    )


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A DKIM signing key: `private_key` is PEM (PKCS#1 or PKCS#8)."""

    domain: str
    selector: str
    private_key: bytes

    @classmethod
    def from_file(cls, domain: str, selector: str, path: str | Path) -> DkimKey:
        try:
            return cls(domain, selector, Path(path).read_bytes())
        except OSError as exc:
            raise MailDeliveryError(f"{path}: cannot read DKIM key: {exc}") from exc


def _human_text(report: Report) -> str:
    ok = sum(p.successes for p in report.policies)
    failed = sum(p.failure_total for p in report.policies)
    return (
        "This is an aggregate TLS report (RFC 8460) from "
        f"{report.organization_name} for {report.policy_domain}, covering "
        f"{_rfc3339(report.start)} to {_rfc3339(report.end)}.\r\n"
        f"Successful sessions: {ok}. Failed sessions: {failed}.\r\n"
        "The report is attached as application/tlsrpt+gzip.\r\n"
    )


def build_report_mail(
    report: Report,
    gz: bytes,
    *,
    mail_from: str,
    rcpt_to: Sequence[str],
    now: float,
    dkim_key: DkimKey | None = None,
) -> bytes:
    """The report mail (RPT-09), CRLF line ends, DKIM-signed when a key is given.

    `TLS-Required: No` (RFC 8689) lets the report through even when TLS to the rua host fails.
    """
    msg = MIMEMultipart("report")
    msg.set_param("report-type", "tlsrpt")
    msg["From"] = mail_from
    msg["To"] = ", ".join(rcpt_to)
    msg["Date"] = email.utils.formatdate(now, usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=a_label(report.submitter) or None)
    msg["Subject"] = report_subject(report)
    msg["TLS-Report-Domain"] = a_label(report.policy_domain)
    msg["TLS-Report-Submitter"] = a_label(report.submitter)
    msg["TLS-Required"] = "No"
    msg.preamble = "This is a TLS report in MIME format.\r\n"
    msg.attach(MIMEText(_human_text(report), "plain", "utf-8"))
    part = MIMEApplication(gz, "tlsrpt+gzip")
    name = report_filename(report)
    part.add_header("Content-Disposition", "attachment", filename=name)
    part.set_param("name", name)
    msg.attach(part)
    data = msg.as_bytes(policy=email.policy.SMTP)
    if dkim_key is None:
        return data
    try:
        signature = dkim.sign(
            data,
            dkim_key.selector.encode(),
            a_label(dkim_key.domain).encode(),
            dkim_key.private_key,
            include_headers=[h.encode() for h in SIGNED_HEADERS],
            length=False,
            tlsrpt=True,
        )
    except dkim.DKIMException as exc:
        raise MailDeliveryError(f"DKIM signing failed: {exc}") from exc
    return bytes(signature) + data


# --- parsing ---------------------------------------------------------------------------------


def _get(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ReportFormatError(f"missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ReportFormatError(f"{key!r} has the wrong type")
    return value


def _opt_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise ReportFormatError(f"{key!r} is not a string")
    return value


def _strings(value: Any, key: str, depth: int = 0) -> tuple[str, ...]:
    """A string or a list of strings; a list inside the list (a TLSA policy written as a JSON
    array inside the array, as some senders do) is flattened, one level deep."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and depth < 2:
        return tuple(text for item in value for text in _strings(item, key, depth + 1))
    raise ReportFormatError(f"{key!r} is not a string or a list of strings")


def _datetime(text: str) -> datetime.datetime:
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ReportFormatError(f"{text!r} is not an RFC 3339 date-time") from None
    if when.tzinfo is None:
        raise ReportFormatError(f"{text!r} has no time zone")
    return when


def _count(obj: Any, key: str) -> int:
    value: int = _get(obj, key, int)
    if value < 0:
        raise ReportFormatError(f"{key!r} is negative")
    return value


def parse_report_json(data: bytes | str) -> Report:
    """Parse an RFC 8460 JSON report; raise `ReportFormatError` if it is not one."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ReportFormatError(f"not JSON: {exc}") from None
    date_range = _get(doc, "date-range", dict)
    policies: list[ReportPolicy] = []
    for item in _get(doc, "policies", list):
        pol = _get(item, "policy", dict)
        try:
            ptype = PolicyType(_get(pol, "policy-type", str))
        except ValueError:
            raise ReportFormatError("unknown policy-type") from None
        summary = _get(item, "summary", dict)
        failures: list[tuple[FailureKey, int]] = []
        for f in item.get("failure-details", []) if isinstance(item, dict) else []:
            try:
                rtype = ResultType(_get(f, "result-type", str))
            except ValueError:
                raise ReportFormatError("unknown result-type") from None
            key = FailureKey(
                result_type=rtype,
                sending_mta_ip=_opt_str(f, "sending-mta-ip"),
                receiving_mx_hostname=_opt_str(f, "receiving-mx-hostname"),
                receiving_mx_helo=_opt_str(f, "receiving-mx-helo"),
                receiving_ip=_opt_str(f, "receiving-ip"),
                failure_reason_code=_opt_str(f, "failure-reason-code"),
                additional_information=_opt_str(f, "additional-information"),
            )
            failures.append((key, _count(f, "failed-session-count")))
        policies.append(
            ReportPolicy(
                policy_type=ptype,
                policy_strings=_strings(pol.get("policy-string", []), "policy-string"),
                # Some senders leave it out of a no-policy-found entry.
                policy_domain=_opt_str(pol, "policy-domain"),
                mx_hosts=_strings(pol.get("mx-host", []), "mx-host"),
                successes=_count(summary, "total-successful-session-count"),
                failures=tuple(failures),
                reported_failures=_count(summary, "total-failure-session-count"),
            )
        )
    return Report(
        organization_name=_get(doc, "organization-name", str),
        start=_datetime(_get(date_range, "start-datetime", str)),
        end=_datetime(_get(date_range, "end-datetime", str)),
        contact_info=_opt_str(doc, "contact-info"),  # left out by some senders
        report_id=_get(doc, "report-id", str),
        policy_domain=policies[0].policy_domain if policies else "",
        submitter="",
        policies=tuple(policies),
    )
