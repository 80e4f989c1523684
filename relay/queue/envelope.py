"""A queued message's envelope: recipients and their states, flags, history, and its codec.

The envelope is one JSON line: the first line of ``queue/msg/<id>`` and, after a delivery
attempt changed it, the whole of ``queue/state/<id>.json`` (see `relay.queue.spool`).
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


class RcptStatus(StrEnum):
    """PENDING: still to deliver. FAILED: failed for good, its DSN not yet queued (the next
    step queues it, see `Spool.queue_dsn`). BOUNCED: failed and reported (or nobody to report
    to). DELETED: taken out by `stsguard queue delete`."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    BOUNCED = "bounced"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient and where its delivery stands."""

    address: str
    status: RcptStatus = RcptStatus.PENDING
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class MessageFlags:
    """What the delivery must know about a message beyond its envelope.

    `tls_required_no`: the message carried ``TLS-Required: No`` (RFC 8689 section 5).
    `no_tlsrpt`: our own TLS-RPT report mail (RFC 8460 section 3: no MTA-STS, not counted).
    `is_bounce`: a DSN we generated (never bounced again). `smtputf8` / `eight_bit`: the client
    sent MAIL FROM with SMTPUTF8 / BODY=8BITMIME, so the next hop must offer the same.
    """

    tls_required_no: bool = False
    no_tlsrpt: bool = False
    is_bounce: bool = False
    smtputf8: bool = False
    eight_bit: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """One line of a message's history: a delivery attempt to one domain, or an event (held,
    released, bounced). `outcome` is a word (delivered, deferred, failed, held, ...)."""

    at: float
    domain: str
    outcome: str
    reason: str = ""


# A message's history keeps this many lines, the newest.
HISTORY_MAX = 20


# Our own TLS-RPT report mail: delivered without MTA-STS and not counted (RFC 8460 3, 5.3).
REPORT_MAIL_FLAGS = MessageFlags(tls_required_no=True, no_tlsrpt=True)


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message in the queue: its envelope and recipient states (the data is in `read_data`)."""

    id: str
    mail_from: str
    recipients: tuple[Recipient, ...]
    received_at: float
    size: int
    flags: MessageFlags = field(default_factory=MessageFlags)
    client: str = ""
    # Set aside (not delivered) until released; the reason, or "" when not held.
    held: str = ""
    # The queue id its DSN gets (or got): set with the first FAILED recipient, cleared once the
    # DSN is queued, so a crash between the two never queues a second DSN.
    dsn_id: str = ""
    # A "delayed" DSN ([delivery].delay_warning) went out.
    warned: bool = False
    history: tuple[Attempt, ...] = ()

    @property
    def pending(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if r.status is RcptStatus.PENDING)

    @property
    def failed(self) -> tuple[Recipient, ...]:
        """Failed for good, DSN not yet queued."""
        return tuple(r for r in self.recipients if r.status is RcptStatus.FAILED)

    @property
    def next_attempt_at(self) -> float | None:
        """When the earliest pending recipient is due; None when nothing is pending."""
        times = [r.next_attempt_at for r in self.pending]
        return min(times) if times else None

    def is_due(self, now: float) -> bool:
        due = self.next_attempt_at
        return due is not None and due <= now


@dataclass(frozen=True, slots=True)
class ScanEntry:
    """One message as `Spool.scan` sees it: when it is due (None: nothing pending), when it
    came, whether it is held and whether it has FAILED recipients whose DSN is not queued."""

    id: str
    due: float | None
    received_at: float
    held: bool
    failed: bool


def new_queue_id() -> str:
    """16 base32 characters (80 random bits): unique without coordination between processes."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii")


def valid_queue_id(text: str) -> bool:
    return len(text) == 16 and set(text) <= _ID_CHARS


_FLAG_NAMES = tuple(f.name for f in fields(MessageFlags))


def encode_envelope(message: QueuedMessage) -> bytes:
    # By hand rather than `dataclasses.asdict`, which deep-copies and cost 3% of the relay's CPU.
    raw = {
        "id": message.id,
        "mail_from": message.mail_from,
        "recipients": [
            {
                "address": r.address,
                "status": r.status.value,
                "attempts": r.attempts,
                "next_attempt_at": r.next_attempt_at,
                "last_error": r.last_error,
            }
            for r in message.recipients
        ],
        "received_at": message.received_at,
        "size": message.size,
        "flags": {name: getattr(message.flags, name) for name in _FLAG_NAMES},
        "client": message.client,
        "held": message.held,
        "dsn_id": message.dsn_id,
        "warned": message.warned,
        "history": [[a.at, a.domain, a.outcome, a.reason] for a in message.history],
    }
    return json.dumps(raw, sort_keys=True).encode("utf-8")


def decode_envelope(blob: bytes) -> QueuedMessage:
    raw: dict[str, Any] = json.loads(blob)
    return QueuedMessage(
        id=str(raw["id"]),
        mail_from=str(raw["mail_from"]),
        recipients=tuple(
            Recipient(
                address=str(r["address"]),
                status=RcptStatus(r["status"]),
                attempts=int(r["attempts"]),
                next_attempt_at=float(r["next_attempt_at"]),
                last_error=str(r["last_error"]),
            )
            for r in raw["recipients"]
        ),
        received_at=float(raw["received_at"]),
        size=int(raw["size"]),
        flags=MessageFlags(**{k: bool(v) for k, v in raw.get("flags", {}).items()}),
        client=str(raw.get("client", "")),
        held=str(raw.get("held", "")),
        dsn_id=str(raw.get("dsn_id", "")),
        warned=bool(raw.get("warned", False)),
        history=tuple(
            Attempt(float(a[0]), str(a[1]), str(a[2]), str(a[3])) for a in raw.get("history", ())
        ),
    )
