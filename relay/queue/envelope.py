"""A queued message's envelope: recipients and their states, flags, history, and its codec.

The envelope is one JSON object on one line: the first line of ``queue/msg/<id>`` and, after a
delivery attempt changed it, the whole of ``queue/state/<id>.json`` (see `relay.queue.spool`).

Its schema is declared here (`ENVELOPE_FIELDS`, `FLAG_FIELDS`) and versioned (``schema``;
files without it are version 1). A newer reader reads every older file: fields added later have
defaults. A reader keeps the fields and flags it does not know and writes them back unchanged.
A writer lists in ``must_understand`` every field (``name``) or flag (``flags.name``) that is
set and whose meaning a reader must honour to deliver the message (REQUIRETLS is one);
a reader that does not know one of them holds the message (it is not delivered, not changed,
not lost; ``queue list`` shows why) until a stsguard that knows it runs.

===========================  =====  ====  ============================================
field                        since  must  meaning
===========================  =====  ====  ============================================
``schema``                   2            the envelope's schema version
``must_understand``          2            names a reader must know to deliver the message
``id``                       1            the queue id (16 base32 characters)
``mail_from``                1            the envelope sender ("" for a bounce)
``recipients``               1            [{address, status, attempts, next_attempt_at,
                                          last_error}], status one of `RecipientState`
``received_at``              1            when intake queued it (Unix time)
``size``                     1            the message's size in bytes
``flags``                    1            {name: bool}, the flags below
``client``                   1            where it came from (address or "stsguard")
``held``                     1            why it is set aside ("" when not)
``dsn_id``                   1            the queue id its DSN gets (set until it is queued)
``warned``                   1            a "delayed" DSN went out
``history``                  1            [[at, domain, outcome, reason], ...], the newest 20
``first_attempt_at``         4            when its first delivery attempt began (0: none yet)
``flags.tls_required_no``    1            ``TLS-Required: No`` (RFC 8689 section 5)
``flags.no_tlsrpt``          1            our own TLS-RPT report mail (RFC 8460 section 3)
``flags.is_bounce``          1            a DSN we generated
``flags.smtputf8``           1            the client sent SMTPUTF8 (RFC 6531)
``flags.eight_bit``          1            the client sent BODY=8BITMIME (RFC 6152)
``flags.requiretls``         3      yes   the client sent REQUIRETLS (RFC 8689); written only
                                          when set, so a reader older than schema 2 refuses the
                                          envelope (unknown flag) rather than ignore it
===========================  =====  ====  ============================================
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from relay.errors import SpoolError
from relay.message_flags import MessageFlags

_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


class RecipientState(StrEnum):
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
    status: RecipientState = RecipientState.PENDING
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of a message's history: a delivery attempt to one domain, or an event (held,
    released, bounced). `outcome` is a word (delivered, deferred, failed, held, ...)."""

    at: float
    domain: str
    outcome: str
    reason: str = ""


# A message's history keeps this many lines, the newest.
HISTORY_MAX = 20


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
    history: tuple[HistoryEntry, ...] = ()
    # When its first delivery attempt began (0.0: none yet), for the delays of `queue.removed`.
    first_attempt_at: float = 0.0
    # Fields and flags this reader does not know, kept to be written back as they were.
    unknown: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # Must-understand names this reader does not know: the message is held and never written.
    not_understood: tuple[str, ...] = ()

    @property
    def pending(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if r.status is RecipientState.PENDING)

    @property
    def failed(self) -> tuple[Recipient, ...]:
        """Failed for good, DSN not yet queued."""
        return tuple(r for r in self.recipients if r.status is RecipientState.FAILED)

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


SCHEMA_VERSION = 4


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of the envelope schema: the version that added it, and whether a reader must
    understand it (when it is set) to deliver the message."""

    since: int
    must_understand: bool = False


ENVELOPE_FIELDS: dict[str, FieldSpec] = {
    "schema": FieldSpec(2),
    "must_understand": FieldSpec(2),
    **{
        name: FieldSpec(1)
        for name in (
            "id",
            "mail_from",
            "recipients",
            "received_at",
            "size",
            "flags",
            "client",
            "held",
            "dsn_id",
            "warned",
            "history",
        )
    },
    "first_attempt_at": FieldSpec(4),
}
FLAG_FIELDS: dict[str, FieldSpec] = {
    "tls_required_no": FieldSpec(1),
    "no_tlsrpt": FieldSpec(1),
    "is_bounce": FieldSpec(1),
    "smtputf8": FieldSpec(1),
    "eight_bit": FieldSpec(1),
    "requiretls": FieldSpec(3, must_understand=True),
}
_FLAG_NAMES = tuple(f.name for f in fields(MessageFlags))
assert set(_FLAG_NAMES) == set(FLAG_FIELDS), "every flag is declared in FLAG_FIELDS"
_KNOWN_NAMES = frozenset(ENVELOPE_FIELDS) | {f"flags.{name}" for name in FLAG_FIELDS}
_MUST_UNDERSTAND_FLAGS = tuple(n for n, spec in FLAG_FIELDS.items() if spec.must_understand)
# Written only when set: a reader from before schema 2 fails on any unknown flag, so a message
# without it stays readable there and one with it is refused, never delivered without it.
_FLAGS_WRITTEN_WHEN_SET = frozenset({"requiretls"})


class EnvelopeNotUnderstood(SpoolError):
    """An envelope names a must-understand field or flag this stsguard does not know; the
    message is held, never delivered or rewritten by this version."""


def not_understood(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The must-understand names of a decoded envelope that this reader does not know."""
    names = raw.get("must_understand", [])
    if not isinstance(names, list):
        raise ValueError(f"must_understand: expected a list, got {names!r}")
    return tuple(sorted(str(n) for n in names if n not in _KNOWN_NAMES))


def check_writable(message: QueuedMessage) -> None:
    """`EnvelopeNotUnderstood` when this stsguard must not change `message`."""
    if message.not_understood:
        raise EnvelopeNotUnderstood(
            f"{message.id}: not changed: this stsguard does not know "
            f"{', '.join(message.not_understood)}"
        )


def encode_envelope(message: QueuedMessage) -> bytes:
    """The envelope as one JSON line (no line break in it)."""
    check_writable(message)
    # By hand rather than `dataclasses.asdict`, which deep-copies and cost 3% of the relay's CPU.
    flags = {name: getattr(message.flags, name) for name in _FLAG_NAMES}
    raw = {
        "schema": SCHEMA_VERSION,
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
        "flags": flags,
        "client": message.client,
        "held": message.held,
        "dsn_id": message.dsn_id,
        "warned": message.warned,
        "history": [[a.at, a.domain, a.outcome, a.reason] for a in message.history],
        "first_attempt_at": message.first_attempt_at,
    }
    for key, value in message.unknown.items():
        if key == "flags":
            flags.update(value)
        else:
            raw[key] = value
    must = [f"flags.{name}" for name in _MUST_UNDERSTAND_FLAGS if flags[name]]
    if must:
        raw["must_understand"] = must
    for name in _FLAGS_WRITTEN_WHEN_SET:
        if not flags[name]:
            del flags[name]
    return json.dumps(raw, sort_keys=True).encode("utf-8")


def decode_envelope(blob: bytes) -> QueuedMessage:
    """The envelope of one JSON line, of any schema version so far. A must-understand name this
    reader does not know gives a held message marked `not_understood` (it cannot be written)."""
    raw: dict[str, Any] = json.loads(blob)
    flags: dict[str, Any] = raw.get("flags", {})
    unknown: dict[str, Any] = {k: v for k, v in raw.items() if k not in ENVELOPE_FIELDS}
    unknown_flags = {k: v for k, v in flags.items() if k not in FLAG_FIELDS}
    if unknown_flags:
        unknown["flags"] = unknown_flags
    needs = not_understood(raw)
    held = str(raw.get("held", ""))
    if needs and not held:
        held = f"needs a newer stsguard: it must understand {', '.join(needs)}"
    return QueuedMessage(
        id=str(raw["id"]),
        mail_from=str(raw["mail_from"]),
        recipients=tuple(
            Recipient(
                address=str(r["address"]),
                status=RecipientState(r["status"]),
                attempts=int(r["attempts"]),
                next_attempt_at=float(r["next_attempt_at"]),
                last_error=str(r["last_error"]),
            )
            for r in raw["recipients"]
        ),
        received_at=float(raw["received_at"]),
        size=int(raw["size"]),
        flags=MessageFlags(**{k: bool(v) for k, v in flags.items() if k in FLAG_FIELDS}),
        client=str(raw.get("client", "")),
        held=held,
        dsn_id=str(raw.get("dsn_id", "")),
        warned=bool(raw.get("warned", False)),
        history=tuple(
            HistoryEntry(float(a[0]), str(a[1]), str(a[2]), str(a[3]))
            for a in raw.get("history", ())
        ),
        first_attempt_at=float(raw.get("first_attempt_at", 0.0)),
        unknown=unknown,
        not_understood=needs,
    )
