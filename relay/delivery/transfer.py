"""Message transfer on an established session: MAIL, RCPT, DATA, and what each reply means."""

from __future__ import annotations

import re

import aiosmtplib

from relay.decision import decide_reply
from relay.delivery.model import (
    DeliveryOutcome,
    DeliveryRequest,
    RcptOutcome,
    RcptStatus,
    every_rcpt,
    rcpt_status,
)
from relay.delivery.negotiate import Established
from relay.delivery.session import WIRE_ERRORS
from relay.errors import SessionError

_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r")


def normalize_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF, ending with one (TLS-06: no bare LF or CR reaches the MX)."""
    pairs = data.count(b"\r\n")
    if not data.count(b"\r") == pairs == data.count(b"\n"):  # intake refused bare ones already
        data = _LINE_ENDINGS.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


async def transfer(
    request: DeliveryRequest, session: Established, mx_host: str
) -> DeliveryOutcome | RcptOutcome:
    """MAIL, RCPT, DATA on an established session; SMTP replies decide per recipient.
    Raises `SessionError` when the session broke."""
    client = session.mx.client
    options: list[str] = []
    if request.smtputf8:
        if not client.supports_extension("smtputf8"):
            # RFC 6531 3.2: an SMTPUTF8 message must not go to a server without SMTPUTF8.
            reason = "554 5.6.7 the next hop does not support SMTPUTF8"
            return every_rcpt(request, RcptStatus.BOUNCED, reason, mx_host, session.tls)
        options.append("SMTPUTF8")
    encoding = "utf-8" if request.smtputf8 else "ascii"
    if request.eight_bit and client.supports_extension("8bitmime"):
        # Without 8BITMIME at the next hop the body goes as it is, as Postfix does by default.
        options.append("BODY=8BITMIME")
    try:
        try:
            await client.mail(request.mail_from, options=options, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            verdict = decide_reply(exc.code, exc.message)
            await client.rset()
            return every_rcpt(request, rcpt_status(verdict), verdict.reason, mx_host, session.tls)
        results: dict[str, RcptOutcome] = {}
        accepted: list[str] = []
        for rcpt in request.rcpts:
            try:
                await client.rcpt(rcpt, encoding=encoding)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                verdict = decide_reply(exc.code, exc.message)
                results[rcpt] = RcptOutcome(
                    rcpt, rcpt_status(verdict), verdict.reason, None, mx_host, session.tls
                )
        if accepted:
            try:
                reply = await client.data(normalize_crlf(request.data))
                status, reason = RcptStatus.DELIVERED, f"{reply.code} {reply.message}"
            except aiosmtplib.SMTPResponseException as exc:
                verdict = decide_reply(exc.code, exc.message)
                status, reason = rcpt_status(verdict), verdict.reason
            for rcpt in accepted:
                results[rcpt] = RcptOutcome(rcpt, status, reason, None, mx_host, session.tls)
        else:
            await client.rset()
    except WIRE_ERRORS as exc:
        raise SessionError(f"session lost: {type(exc).__name__}: {exc}") from exc
    return DeliveryOutcome(request.queue_id, tuple(results[r] for r in request.rcpts))
