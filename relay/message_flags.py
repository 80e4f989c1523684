"""What a message asks of its delivery beyond its envelope: one value object from intake through
the queue (`relay.queue.envelope` stores it) to the deliverer (`DeliveryRequest.flags`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MessageFlags:
    """What the delivery must know about a message beyond its envelope.

    `tls_required_no`: the message carried ``TLS-Required: No`` (RFC 8689 section 5).
    `no_tlsrpt`: our own TLS-RPT report mail (RFC 8460 section 3: no MTA-STS, not counted).
    `is_bounce`: a DSN we generated (never bounced again). `smtputf8` / `eight_bit`: the client
    sent MAIL FROM with SMTPUTF8 / BODY=8BITMIME, so the next hop must offer the same.
    `requiretls`: the client sent MAIL FROM with REQUIRETLS (RFC 8689): validated TLS to an
    authenticated MX that offers REQUIRETLS, or a bounce.
    """

    tls_required_no: bool = False
    no_tlsrpt: bool = False
    is_bounce: bool = False
    smtputf8: bool = False
    eight_bit: bool = False
    requiretls: bool = False


NO_FLAGS = MessageFlags()


def dsn_flags(original: MessageFlags) -> MessageFlags:
    """The flags of a DSN about a message with `original` flags: a DSN about a REQUIRETLS message
    is sent with REQUIRETLS too (RFC 8689 section 5: it carries the original headers)."""
    return MessageFlags(is_bounce=True, requiretls=original.requiretls)


# Our own TLS-RPT report mail: delivered without MTA-STS and not counted (RFC 8460 3, 5.3).
REPORT_MAIL_FLAGS = MessageFlags(tls_required_no=True, no_tlsrpt=True)
