"""Delivery status notifications (RFC 3464): pure, bytes out, `now` passed in.

A DSN is ``multipart/report; report-type=delivery-status`` with three parts: words for people, a
``message/delivery-status`` part (one per-message block, one block per failed recipient) and the
original headers as ``text/rfc822-headers`` (RFC 6522). It is sent with the null sender, so it is
never bounced itself (RFC 5321 section 4.5.5); `should_bounce` enforces the other direction.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import hashlib
import re
from collections.abc import Sequence
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime

from relay.queue.spool import MessageFlags, QueuedMessage

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE = re.compile(r"^[245]\d\d[ -]")
_WIRE = email.policy.compat32.clone(linesep="\r\n")


def should_bounce(mail_from: str, flags: MessageFlags) -> bool:
    """False for the null sender (a bounce of a bounce), our own bounces and TLS-RPT mail."""
    sender = mail_from.strip()
    return sender not in ("", "<>") and not flags.is_bounce and not flags.no_tlsrpt


# RFC 3463 subject.detail by cause, for reasons no reply code speaks for. TLS and policy causes
# are named by their RFC 8460 result type in the reason; Postfix's codes where it has one.
_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), detail)
    for pattern, detail in (
        # X.7.4 "security features not supported" (Postfix: "TLS is required, but was not offered")
        (r"\bstarttls-not-supported\b", "7.4"),
        # X.7.5 "cryptographic failure": a certificate, TLSA or DNSSEC check that failed
        (
            r"\b(certificate-host-mismatch|certificate-expired|certificate-not-trusted"
            r"|validation-failure|tlsa-invalid|dnssec-invalid|dane-required|sts-webpki-invalid)\b",
            "7.5",
        ),
        (r"\bsts-policy-(fetch-error|invalid)\b", "7.0"),  # X.7.0: other security status
        (r"null MX", "1.10"),  # X.1.10 "recipient address has null MX" (RFC 7505)
        (r"no such domain|no MX and no address", "1.2"),  # X.1.2: bad destination system
        (r"\b(DNS|nameservers?|NXDOMAIN|SERVFAIL)\b", "4.3"),  # X.4.3: directory server failure
        (r"no MX host to try|has no address", "4.4"),  # X.4.4: unable to route
        # X.4.2 "bad connection": a session that broke off (Postfix: "lost connection")
        (r"connection (lost|reset|closed)|disconnected|not connected|\bEOF\b|waiting for", "4.2"),
        # X.4.1 "no answer from host"
        (r"connect|refused|unreachable|timed out|timeout|no address answered", "4.1"),
    )
)


def status_detail(reason: str) -> str:
    """The RFC 3463 subject and detail (``7.5``) of a failure reason: from the result type of a
    TLS or policy failure, else from the reply code the server gave, else from the cause the
    reason names (network, DNS), else ``0.0``."""
    for pattern, detail in _CAUSES[:3]:
        if pattern.search(reason):
            return detail
    m = _STATUS.search(reason)
    if m:
        return f"{m.group(2)}.{m.group(3)}"
    for pattern, detail in _CAUSES[3:]:
        if pattern.search(reason):
            return detail
    return "0.0"


def status_of(reason: str, *, delayed: bool = False) -> str:
    """The RFC 3463 status for a failure reason (`status_detail`).

    A DSN with ``Action: failed`` needs a permanent class, so a 4.x.x found in the reason (a
    message that expired while deferred) is reported with class 5 and the same detail; a delay
    warning (``Action: delayed``) has class 4.
    """
    return f"{'4' if delayed else '5'}.{status_detail(reason)}"


# Controls, lone surrogates (aiosmtplib decodes an MX's non-UTF-8 bytes with surrogateescape,
# and they cannot be encoded into the DSN) and Unicode line separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _one_line(text: str) -> str:
    """`text` as one header-safe line: unsafe characters become spaces or U+FFFD, runs of
    white space one space."""
    text = _UNSAFE.sub(lambda m: "\ufffd" if m.group() >= "\ud800" else " ", text)
    return " ".join(text.split())


def _address_field(address: str) -> str:
    """``rfc822; addr``, or ``utf-8; addr`` for an internationalised address (RFC 6533)."""
    address = _one_line(address)
    return f"{'rfc822' if address.isascii() else 'utf-8'}; {address}"


def _diagnostic(reason: str) -> str:
    text = _one_line(reason)
    return f"smtp; {text}" if _REPLY_CODE.match(text + " ") else f"X-stsguard; {text}"


def _fields(pairs: Sequence[tuple[str, str]]) -> Message:
    block = Message(policy=_WIRE)
    for name, value in pairs:
        block[name] = value
    return block


def original_headers(data: bytes) -> str:
    """The header section of a message (up to the first empty line), as text."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    return head.decode("utf-8", "replace")


def build_dsn(
    message: QueuedMessage,
    data: bytes,
    failed: Sequence[tuple[str, str]],
    *,
    reporting_mta: str,
    now: float,
    delayed: bool = False,
) -> bytes:
    """A DSN to ``message.mail_from`` for `failed` (recipient, reason) pairs, CRLF line ends.

    `delayed`: a warning that the recipients are still being tried (``Action: delayed``, status
    class 4, [delivery].delay_warning), not a failure."""
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    digest = hashlib.sha256(f"{message.id}{now}{failed!r}".encode()).hexdigest()[:16]

    report = MIMEMultipart("report", report_type="delivery-status", policy=_WIRE)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = f"<{_one_line(message.mail_from)}>"
    report["Subject"] = (
        "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    )
    report["Date"] = format_datetime(when)
    report["Message-ID"] = f"<{message.id}.{digest}@{reporting_mta}>"
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: no auto-replies to this
    report.attach(_human_part(failed, reporting_mta, delayed=delayed))
    report.attach(_status_part(message, failed, reporting_mta, when, delayed=delayed))
    report.attach(MIMEText(original_headers(data), "rfc822-headers", "utf-8", policy=_WIRE))
    return report.as_bytes(policy=_WIRE)


def _human_part(
    failed: Sequence[tuple[str, str]], reporting_mta: str, *, delayed: bool
) -> MIMEText:
    """The first part: what happened, for a person."""
    summary = (
        [
            "Your message could not be delivered to one or more recipients yet.",
            "It is still being retried; you do not need to send it again. The reasons so far:",
        ]
        if delayed
        else [
            "Your message could not be delivered to one or more recipients.",
            "It was given up on for good; the reasons follow.",
        ]
    )
    lines = [
        f"This is the mail system at {reporting_mta}.",
        "",
        *summary,
        "",
        *(f"<{_one_line(rcpt)}>: {_one_line(reason)}" for rcpt, reason in failed),
        "",
    ]
    return MIMEText("\r\n".join(lines), "plain", "utf-8", policy=_WIRE)


def _status_part(
    message: QueuedMessage,
    failed: Sequence[tuple[str, str]],
    reporting_mta: str,
    when: dt.datetime,
    *,
    delayed: bool,
) -> Message[str, str]:
    """The message/delivery-status part (RFC 3464): per-message fields, then per recipient."""
    arrival = dt.datetime.fromtimestamp(message.received_at, dt.UTC)
    status = Message(policy=_WIRE)
    status["Content-Type"] = "message/delivery-status"
    blocks: list[Message[str, str] | str] = [
        _fields(
            [
                ("Reporting-MTA", f"dns; {reporting_mta}"),
                ("X-Queue-ID", message.id),
                ("Arrival-Date", format_datetime(arrival)),
            ]
        )
    ]
    for rcpt, reason in failed:
        blocks.append(
            _fields(
                [
                    ("Final-Recipient", _address_field(rcpt)),
                    ("Action", "delayed" if delayed else "failed"),
                    ("Status", status_of(reason, delayed=delayed)),
                    ("Diagnostic-Code", _diagnostic(reason)),
                    ("Last-Attempt-Date", format_datetime(when)),
                ]
            )
        )
    status.set_payload(blocks)
    return status
