"""Message transfer on an established session: MAIL, RCPT, DATA, and what each reply means.

Replies are judged by class (`relay.delivery.replies`): any 2xx to MAIL or RCPT is acceptance
and DATA follows. An MX that breaks the protocol or drops the connection before the final dot
failed as a whole: `SessionError`, and the deliverer tries the next MX (RFC 5321 5.1). After the
final dot the message may have arrived (RFC 5321 6.1), so the accepted recipients are deferred
and no other MX is tried in this attempt.
"""

from __future__ import annotations

import re

from relay.delivery.model import (
    DeliveryOutcome,
    DeliveryRequest,
    RcptOutcome,
    RcptStatus,
    every_rcpt,
)
from relay.delivery.negotiate import Established
from relay.delivery.replies import ReplyKind, ReplyVerdict, Stage, judge_reply
from relay.errors import SessionError

_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r")
_STATUS = {
    ReplyKind.ACCEPTED: RcptStatus.DELIVERED,
    ReplyKind.TEMPORARY: RcptStatus.DEFERRED,
    ReplyKind.PERMANENT: RcptStatus.BOUNCED,
}


def normalize_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF, ending with one (TLS-06: no bare LF or CR reaches the MX)."""
    pairs = data.count(b"\r\n")
    if not data.count(b"\r") == pairs == data.count(b"\n"):  # intake refused bare ones already
        data = _LINE_ENDINGS.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def dot_stuffed(data: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends, leading dots doubled, CRLF.CRLF at the end
    (RFC 5321 4.5.2)."""
    data = normalize_crlf(data)
    # Every line end is CRLF here, so a line starts at 0 and after each CRLF (no regex scan).
    return (b"." if data.startswith(b".") else b"") + data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class _Unsendable(Exception):
    """An address that cannot be written in this session; the text is the bounce reason."""


def _address(address: str, *, utf8: bool) -> bytes:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in address):
        raise _Unsendable("553 5.1.7 address contains a control character")
    try:
        return b"<" + address.encode("utf-8" if utf8 else "ascii") + b">"
    except UnicodeEncodeError:
        raise _Unsendable("553 5.6.7 non-ASCII address needs SMTPUTF8") from None


async def transfer(
    request: DeliveryRequest, session: Established, mx_host: str
) -> DeliveryOutcome | RcptOutcome:
    """MAIL, RCPT, DATA on an established session; replies decide per recipient.
    Raises `SessionError` when the MX failed before the final dot (the next MX may be tried)."""
    mx = session.mx
    texts = (request.mail_from, *request.rcpts)
    utf8 = request.flags.smtputf8 or not all(t.isascii() for t in texts)
    try:
        options = _mail_options(request, session, utf8=utf8)
        sender = _address(request.mail_from, utf8=utf8)
    except _Unsendable as exc:
        return every_rcpt(request, RcptStatus.BOUNCED, str(exc), mx_host, session.tls)

    reply = await mx.command(b"MAIL", b"FROM:" + sender, *options)
    verdict = _judged(session, Stage.MAIL, reply.code, reply.text)
    if verdict.kind is not ReplyKind.ACCEPTED:
        await _reset(session)
        status = _STATUS[verdict.kind]
        return every_rcpt(request, status, verdict.reason, mx_host, session.tls)

    results, accepted = await _rcpt_to(request, session, mx_host, utf8=utf8)
    if not accepted:
        await _reset(session)
        return DeliveryOutcome(request.queue_id, tuple(results[r] for r in request.rcpts))

    reply = await mx.command(b"DATA")
    verdict = _judged(session, Stage.DATA, reply.code, reply.text)
    if verdict.kind is ReplyKind.GO_AHEAD:
        verdict = await _end_of_data(session, request)
        if verdict.kind is ReplyKind.PROTOCOL_ERROR:
            mx.close()
    else:
        await _reset(session)
    status = _STATUS.get(verdict.kind, RcptStatus.DEFERRED)
    for rcpt in accepted:
        results[rcpt] = RcptOutcome(rcpt, status, verdict.reason, None, mx_host, session.tls)
    return DeliveryOutcome(request.queue_id, tuple(results[r] for r in request.rcpts))


def _mail_options(request: DeliveryRequest, session: Established, *, utf8: bool) -> list[bytes]:
    """MAIL FROM's parameters for this message on this session (`_Unsendable`: none will do)."""
    options: list[bytes] = []
    if utf8:
        if not session.mx.supports("smtputf8"):
            # RFC 6531 3.2: an SMTPUTF8 message must not go to a server without SMTPUTF8.
            raise _Unsendable("554 5.6.7 the next hop does not support SMTPUTF8")
        options.append(b"SMTPUTF8")
    if request.flags.requiretls:
        # RFC 8689 4.2.1: the negotiation let this session through only with REQUIRETLS offered.
        options.append(b"REQUIRETLS")
    if request.flags.eight_bit and session.mx.supports("8bitmime"):
        # Without 8BITMIME at the next hop the body goes as it is, as Postfix does by default.
        options.append(b"BODY=8BITMIME")
    return options


async def _rcpt_to(
    request: DeliveryRequest, session: Established, mx_host: str, *, utf8: bool
) -> tuple[dict[str, RcptOutcome], list[str]]:
    """One RCPT per recipient: the outcomes of those refused, and those accepted, in order."""
    results: dict[str, RcptOutcome] = {}
    accepted: list[str] = []
    for rcpt in request.rcpts:
        try:
            address = _address(rcpt, utf8=utf8)
        except _Unsendable as exc:
            results[rcpt] = RcptOutcome(
                rcpt, RcptStatus.BOUNCED, str(exc), None, mx_host, session.tls
            )
            continue
        reply = await session.mx.command(b"RCPT", b"TO:" + address)
        verdict = _judged(session, Stage.RCPT, reply.code, reply.text)
        if verdict.kind is ReplyKind.ACCEPTED:
            accepted.append(rcpt)
        else:
            status = _STATUS[verdict.kind]
            results[rcpt] = RcptOutcome(rcpt, status, verdict.reason, None, mx_host, session.tls)
    return results, accepted


def _judged(session: Established, stage: Stage, code: int, text: str) -> ReplyVerdict:
    """The reply's verdict; a protocol error closes the session and fails the MX."""
    verdict = judge_reply(stage, code, text)
    if verdict.kind is ReplyKind.PROTOCOL_ERROR:
        session.mx.close()
        raise SessionError(verdict.reason)
    return verdict


async def _end_of_data(session: Established, request: DeliveryRequest) -> ReplyVerdict:
    """Send the message and judge the final reply. From here on the message may have arrived:
    a lost connection or a protocol error is a deferral on this MX, never the next MX."""
    try:
        reply = await session.mx.message_body(dot_stuffed(request.data))
    except SessionError as exc:
        return ReplyVerdict(
            ReplyKind.PROTOCOL_ERROR,
            f"connection lost after the end of data, the message may have arrived: {exc}",
        )
    return judge_reply(Stage.END_OF_DATA, reply.code, reply.text)


async def _reset(session: Established) -> None:
    """RSET after a refused transaction, so the session can carry the next message; a session
    that cannot be reset is closed (the pool skips it)."""
    try:
        reply = await session.mx.command(b"RSET")
    except SessionError:
        return
    if reply.code != 250:
        session.mx.close()
