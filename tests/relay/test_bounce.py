"""DSN building (RFC 3464) and when not to bounce."""

from __future__ import annotations

import email
import email.policy
from email.message import Message

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


def test_status_of() -> None:
    assert status_of("550 5.1.1 no such user") == "5.1.1"
    assert status_of("451 4.4.1 timed out") == "5.4.1"
    assert status_of("connection refused") == "5.0.0"


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
