"""Message transfer on an established session: MAIL, RCPT, DATA, and what each reply means.

When the EHLO after STARTTLS offers PIPELINING (RFC 2920), MAIL, the RCPTs and DATA go in one
write and every reply of the group is judged; otherwise one at a time, stopping where the rest
would be pointless. Replies are judged by class (`relay.delivery.replies`): any 2xx to MAIL or
RCPT is acceptance and DATA follows. An MX that breaks the protocol or drops the connection
before the final dot failed as a whole: `SessionError`, and the deliverer tries the next MX
(RFC 5321 5.1). After the final dot the message may have arrived (RFC 5321 6.1), so the accepted
recipients are deferred and no other MX is tried in this attempt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


Command = tuple[bytes, ...]  # one SMTP command as its words, e.g. (b"RCPT", b"TO:<a@b>")


async def transfer(
    request: DeliveryRequest, session: Established, mx_host: str
) -> DeliveryOutcome | RcptOutcome:
    """MAIL, RCPT, DATA on an established session; replies decide per recipient.
    Raises `SessionError` when the MX failed before the final dot (the next MX may be tried)."""
    texts = (request.mail_from, *request.rcpts)
    utf8 = request.flags.smtputf8 or not all(t.isascii() for t in texts)
    try:
        options = _mail_options(request, session, utf8=utf8)
        mail = (b"MAIL", b"FROM:" + _address(request.mail_from, utf8=utf8), *options)
    except _Unsendable as exc:
        return every_rcpt(request, RcptStatus.BOUNCED, str(exc), mx_host, session.tls)
    results, sendable = _sendable(request, session, mx_host, utf8=utf8)
    rcpts: list[Command] = [(b"RCPT", b"TO:" + address) for _, address in sendable]
    envelope = await _send_envelope(session, mail, rcpts)
    if envelope.mail.kind is not ReplyKind.ACCEPTED:
        await _abandon(session, envelope.data)
        verdict = envelope.mail
        return every_rcpt(request, _STATUS[verdict.kind], verdict.reason, mx_host, session.tls)
    accepted: list[str] = []
    for (rcpt, _), verdict in zip(sendable, envelope.rcpts, strict=True):
        if verdict.kind is ReplyKind.ACCEPTED:
            accepted.append(rcpt)
        else:
            results[rcpt] = _rcpt(rcpt, _STATUS[verdict.kind], verdict.reason, session, mx_host)
    if not accepted or envelope.data is None:
        await _abandon(session, envelope.data)
    else:
        verdict = await _message(session, request, envelope.data)
        status = _STATUS.get(verdict.kind, RcptStatus.DEFERRED)
        results.update((r, _rcpt(r, status, verdict.reason, session, mx_host)) for r in accepted)
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


def _rcpt(
    rcpt: str, status: RcptStatus, reason: str, session: Established, mx_host: str
) -> RcptOutcome:
    return RcptOutcome(rcpt, status, reason, None, mx_host, session.tls)


def _sendable(
    request: DeliveryRequest, session: Established, mx_host: str, *, utf8: bool
) -> tuple[dict[str, RcptOutcome], list[tuple[str, bytes]]]:
    """The bounces of recipients that cannot be written in this session (they are not sent),
    and the others with their addresses as RCPT writes them, in order."""
    bounced: dict[str, RcptOutcome] = {}
    sendable: list[tuple[str, bytes]] = []
    for rcpt in request.rcpts:
        try:
            sendable.append((rcpt, _address(rcpt, utf8=utf8)))
        except _Unsendable as exc:
            bounced[rcpt] = _rcpt(rcpt, RcptStatus.BOUNCED, str(exc), session, mx_host)
    return bounced, sendable


@dataclass(frozen=True, slots=True)
class _Envelope:
    """The verdicts on MAIL, the RCPTs and DATA; in lock-step, those never sent are missing."""

    mail: ReplyVerdict
    rcpts: list[ReplyVerdict]
    data: ReplyVerdict | None


async def _send_envelope(session: Established, mail: Command, rcpts: list[Command]) -> _Envelope:
    """MAIL, the RCPTs and (when there is a RCPT) DATA, and the verdicts on them."""
    verdicts = await _verdicts(session, mail, rcpts)
    count = len(rcpts) + 1
    data = verdicts[count] if len(verdicts) > count else None
    return _Envelope(verdicts[0], verdicts[1:count], data)


async def _verdicts(
    session: Established, mail: Command, rcpts: list[Command]
) -> list[ReplyVerdict]:
    """The verdicts on MAIL, each RCPT and DATA (sent when there is a RCPT), in order. With
    PIPELINING (RFC 2920) the group goes in one write and every reply is judged; in lock-step the
    list ends where going on is pointless: after a refused MAIL, or at DATA without an accepted
    RCPT. A protocol error in any reply raises `SessionError` (`_judged`)."""
    group = [(Stage.MAIL, mail), *((Stage.RCPT, rcpt) for rcpt in rcpts)]
    if rcpts:
        group.append((Stage.DATA, (b"DATA",)))
    mx = session.mx
    if mx.supports("pipelining"):
        replies = await mx.pipeline(*(command for _, command in group))
        return [
            _judged(session, stage, reply.code, reply.text)
            for (stage, _), reply in zip(group, replies, strict=True)
        ]
    verdicts: list[ReplyVerdict] = []
    for stage, command in group:
        if _pointless(stage, verdicts):
            break
        reply = await mx.command(*command)
        verdicts.append(_judged(session, stage, reply.code, reply.text))
    return verdicts


def _pointless(stage: Stage, verdicts: list[ReplyVerdict]) -> bool:
    """In lock-step: nothing after a refused MAIL, and no DATA without an accepted RCPT."""
    if verdicts and verdicts[0].kind is not ReplyKind.ACCEPTED:
        return True
    return stage is Stage.DATA and not any(v.kind is ReplyKind.ACCEPTED for v in verdicts[1:])


async def _message(
    session: Established, request: DeliveryRequest, data: ReplyVerdict
) -> ReplyVerdict:
    """The verdict for the accepted recipients: after a 354 the message's (a protocol error
    there closes the session); after a refused DATA that refusal, and RSET."""
    if data.kind is not ReplyKind.GO_AHEAD:
        await _reset(session)
        return data
    verdict = await _end_of_data(session, request)
    if verdict.kind is ReplyKind.PROTOCOL_ERROR:
        session.mx.close()
    return verdict


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


async def _abandon(session: Established, data: ReplyVerdict | None) -> None:
    """End a transaction that carries no message, then RSET. A 354 to a pipelined DATA after
    refusals gets an empty message's end, its reply ignored (RFC 2920 3.1): nothing went in."""
    if data is not None and data.kind is ReplyKind.GO_AHEAD:
        try:
            await session.mx.message_body(b".\r\n")
        except SessionError:
            return
    await _reset(session)


async def _reset(session: Established) -> None:
    """RSET after a refused transaction, so the session can carry the next message; a session
    that cannot be reset is closed (the pool skips it)."""
    try:
        reply = await session.mx.command(b"RSET")
    except SessionError:
        return
    if reply.code != 250:
        session.mx.close()
