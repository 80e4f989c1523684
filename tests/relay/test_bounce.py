"""DSN building (RFC 3464) and when not to bounce."""

from __future__ import annotations

import email
import email.policy
from email.message import Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.queue.bounce import build_dsn, should_bounce, status_of
from relay.queue.spool import MessageFlags, QueuedMessage, Recipient

ORIGINAL = (
    b"Received: from client ([127.0.0.1])\r\n\tby relay.test; Thu, 01 Jan 1970 00:00:00 +0000\r\n"
    b"From: a@example.net\r\nTo: b@example.org\r\nSubject: quarterly numbers\r\n"
    b"Message-ID: <orig-1@example.net>\r\n\r\nsecret body text\r\n"
)


def queued(mail_from: str = "a@example.net", flags: MessageFlags | None = None) -> QueuedMessage:
    return QueuedMessage(
        id="ABCDEFGHIJKLMNOP",
        mail_from=mail_from,
        recipients=(Recipient("b@example.org"), Recipient("c@example.com")),
        received_at=86400.0,
        size=len(ORIGINAL),
        flags=flags or MessageFlags(),
    )


def parse(blob: bytes) -> Message:
    return email.message_from_bytes(blob, policy=email.policy.compat32)


def parts(msg: Message) -> list[Message]:
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return [p for p in payload if isinstance(p, Message)]


def body(msg: Message) -> str:
    payload = msg.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def test_dsn_is_a_multipart_report_with_three_parts() -> None:
    blob = build_dsn(
        queued(),
        ORIGINAL,
        [
            ("b@example.org", "550 5.1.1 <b@example.org>: Recipient address rejected"),
            ("c@example.com", "MTA-STS policy not satisfied after 5 days (4.7.5)"),
        ],
        reporting_mta="relay.test",
        now=2 * 86400.0,
    )
    assert b"\r\n" in blob
    assert b"\n" not in blob.replace(b"\r\n", b"")  # CRLF only, like everything we send
    msg = parse(blob)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "<a@example.net>"
    assert "MAILER-DAEMON@relay.test" in str(msg["From"])
    assert msg["Auto-Submitted"] == "auto-replied"
    human, status, headers = parts(msg)
    assert human.get_content_type() == "text/plain"
    text = body(human)
    assert "<b@example.org>: 550 5.1.1" in text

    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_rcpt = parts(status)
    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert per_message["Arrival-Date"] == "Fri, 02 Jan 1970 00:00:00 +0000"
    assert [b["Final-Recipient"] for b in per_rcpt] == [
        "rfc822; b@example.org",
        "rfc822; c@example.com",
    ]
    assert [b["Action"] for b in per_rcpt] == ["failed", "failed"]
    assert [b["Status"] for b in per_rcpt] == ["5.1.1", "5.7.5"]
    assert str(per_rcpt[0]["Diagnostic-Code"]).startswith("smtp; 550 5.1.1")
    assert str(per_rcpt[1]["Diagnostic-Code"]).startswith("X-stsguard; MTA-STS")

    assert headers.get_content_type() == "text/rfc822-headers"
    original = body(headers)
    assert "Subject: quarterly numbers" in original
    assert "Message-ID: <orig-1@example.net>" in original
    assert "secret body text" not in original


def test_no_bounce_for_null_sender_bounces_or_reports() -> None:
    assert should_bounce("a@example.net", MessageFlags())
    assert not should_bounce("", MessageFlags())
    assert not should_bounce("<>", MessageFlags())
    assert not should_bounce("a@example.net", MessageFlags(is_bounce=True))
    assert not should_bounce("tlsrpt@example.net", MessageFlags(no_tlsrpt=True))


# (reason as the queue keeps it, status in a failure DSN); a delay warning has class 4.
STATUS_BY_CAUSE = [
    ("550 5.1.1 no such user", "5.1.1"),
    ("451 4.4.1 timed out", "5.4.1"),
    ("554 5.4.6 mail loop: 31 Received: headers (more than 30)", "5.4.6"),
    ("4.3.0 internal error: RuntimeError: boom", "5.3.0"),
    ("452 too many recipients", "5.0.0"),  # a reply code without an enhanced status
    ("something nobody foresaw", "5.0.0"),
    # TLS and policy failures, named by their RFC 8460 result type
    ("starttls-stripped: EHLO reply without STARTTLS (starttls-not-supported)", "5.7.4"),
    ("certificate did not validate (certificate-expired)", "5.7.5"),
    ("certificate did not validate (certificate-not-trusted)", "5.7.5"),
    ("certificate did not validate (certificate-host-mismatch)", "5.7.5"),
    ("downgrade: 220 2.0.0 Ready; TLS handshake failed (validation-failure)", "5.7.5"),
    ("tlsa-invalid: no TLSA record matches the certificate", "5.7.5"),
    ("TLSA look-up failed: SERVFAIL (dnssec-invalid)", "5.7.5"),
    ("dane-required: no usable TLSA records", "5.7.5"),
    ("policy host certificate expired (sts-webpki-invalid)", "5.7.5"),
    ("policy fetch failed (sts-policy-fetch-error)", "5.7.0"),
    # DNS and routing
    ("example.org does not accept mail (null MX)", "5.1.10"),
    ("nowhere.example: no such domain", "5.1.2"),
    ("The DNS operation timed out.", "5.4.3"),
    ("All nameservers failed to answer the query example.org. IN MX", "5.4.3"),
    ("no MX host to try", "5.4.4"),
    ("mx1.example.org has no address", "5.4.4"),
    # the network
    ("SMTPConnectError: Error connecting to 192.0.2.1 on port 25: Connection refused", "5.4.1"),
    ("SMTPConnectTimeoutError: Timed out connecting to 192.0.2.1 on port 25", "5.4.1"),
    ("no address answered", "5.4.1"),
    ("SMTPServerDisconnected: Connection lost", "5.4.2"),
    ("Unexpected EOF received", "5.4.2"),
    ("SMTPReadTimeoutError: Timed out waiting for server response", "5.4.2"),
    # an expired message keeps the cause of its last deferral
    (
        "certificate did not validate (certificate-expired) (queue_lifetime of 5d reached)",
        "5.7.5",
    ),
    ("delivery to example.org temporarily suspended: no address answered", "5.4.1"),
]


@pytest.mark.parametrize(("reason", "status"), STATUS_BY_CAUSE)
def test_status_by_cause(reason: str, status: str) -> None:
    """RFC 3463 codes by cause; TLS failures said 4.0.0 / 5.0.0 before."""
    assert status_of(reason) == status
    assert status_of(reason, delayed=True) == "4" + status[1:]


def test_delay_warning_for_a_tls_failure_says_4_7_5() -> None:
    blob = build_dsn(
        queued(),
        ORIGINAL,
        [("b@example.org", "certificate did not validate (certificate-not-trusted)")],
        reporting_mta="relay.test",
        now=2 * 86400.0,
        delayed=True,
    )
    [_, rcpt] = parts(parts(parse(blob))[1])
    assert (rcpt["Action"], rcpt["Status"]) == ("delayed", "4.7.5")


def test_multiline_reason_cannot_inject_headers() -> None:
    blob = build_dsn(
        queued(),
        ORIGINAL,
        [("b@example.org", "550 no\r\nX-Evil: yes\r\n\r\nbody")],
        reporting_mta="relay.test",
        now=0,
    )
    status = parts(parse(blob))[1]
    [_, rcpt] = parts(status)
    assert rcpt["X-Evil"] is None
    assert rcpt["Diagnostic-Code"] == "smtp; 550 no X-Evil: yes body"


@settings(max_examples=100, deadline=None)
@given(
    reason=st.text(max_size=300),
    data=st.binary(max_size=300),
    rcpt=st.emails(),
)
def test_dsn_always_parses(reason: str, data: bytes, rcpt: str) -> None:
    blob = build_dsn(queued(), data, [(rcpt, reason)], reporting_mta="relay.test", now=0)
    assert b"\n" not in blob.replace(b"\r\n", b"")
    msg = parse(blob)
    assert msg.get_content_type() == "multipart/report"
    [_, block] = parts(parts(msg)[1])
    assert block["Action"] == "failed"
    assert str(block["Status"]).startswith("5.")
