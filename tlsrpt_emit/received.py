"""Reports we receive from other senders (for our own domains): JSON, gzip, or the report mail.

Pure: bytes in, `Report`s out. Google, Microsoft, Mail.ru and others send what RFC 8460 section 5
describes; `parse_report_json` reads each one's way of writing it (`mx-host` a string or a list).
"""

from __future__ import annotations

import email
import email.policy
import zlib
from email.message import Message

from tlsrpt_emit.errors import ReportFormatError
from tlsrpt_emit.model import Report
from tlsrpt_emit.render import parse_report_json

MAX_REPORT_BYTES = 32 * 1024 * 1024  # an unpacked report larger than this is not a report
_MEDIA_TYPES = ("application/tlsrpt+gzip", "application/tlsrpt+json")


def _gunzip(data: bytes) -> bytes:
    """gzip with a cap on the unpacked size (a small file can unpack to gigabytes)."""
    unpacker = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = unpacker.decompress(data, MAX_REPORT_BYTES + 1)
    except zlib.error as exc:
        raise ReportFormatError(f"not gzip: {exc}") from None
    if len(out) > MAX_REPORT_BYTES:
        raise ReportFormatError(f"unpacks to more than {MAX_REPORT_BYTES} bytes")
    return out


def _from_part(part: Message) -> bytes | None:
    """The report carried by one MIME part, or None when the part is not a report."""
    name = (part.get_filename() or "").lower()
    if part.get_content_type() not in _MEDIA_TYPES and not name.endswith((".json", ".json.gz")):
        return None
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    return _gunzip(payload) if payload[:2] == b"\x1f\x8b" else payload


def read_received(data: bytes) -> list[Report]:
    """The reports in one file: a JSON report, a gzipped one, or a report mail (RFC 8460 5.3).

    Raises `ReportFormatError` when the file holds no report we can read.
    """
    return [parse_report_json(document) for document in report_documents(data)]


def report_documents(data: bytes) -> list[bytes]:
    """The JSON of each report in one file (JSON, gzip, or a report mail), not yet parsed."""
    if data[:2] == b"\x1f\x8b":
        return [_gunzip(data)]
    if data.lstrip()[:1] == b"{":
        return [data]
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    if not message.is_multipart() and not message.get_content_type().startswith("application/"):
        raise ReportFormatError("neither JSON, gzip nor a report mail")
    found = [body for part in message.walk() if (body := _from_part(part)) is not None]
    if not found:
        raise ReportFormatError("a mail without an application/tlsrpt+gzip or +json part")
    return found
