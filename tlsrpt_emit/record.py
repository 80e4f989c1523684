"""The `_smtp._tls.<domain>` TXT record (RFC 8460 section 3): pure parsing plus one DNS look-up."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver
import structlog

from tlsrpt_emit.errors import TlsRptLookupError, TlsRptRecordError

log = structlog.get_logger(__name__)

VERSION = "v=TLSRPTv1"
SCHEMES = ("mailto", "https")

# field-delim = *WSP ";" *WSP
_DELIM = re.compile(r"[ \t]*;[ \t]*")
_VERSION_FIELD = re.compile(r"^v=TLSRPTv1[ \t]*(?:;|\Z)")
_EXT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}\Z")
# tlsrpt-ext-value: %x21-3A / %x3C / %x3E-7E (no "=", ";", space or controls)
_EXT_VALUE = re.compile(r"^[\x21-\x3a\x3c\x3e-\x7e]+\Z")
# A URI (RFC 3986) as far as we care: scheme ":" then printable ASCII, where "," "!" ";" must be
# percent-encoded (RFC 8460 section 3), so they cannot appear raw.
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):([\x21-\x7e]+)\Z")
_RUA_SPLIT = re.compile(r"[ \t]*,[ \t]*")


@dataclass(frozen=True, slots=True)
class TlsRptRecord:
    """A parsed TLSRPTv1 record: the `rua` URIs we can use (mailto and https), as published."""

    rua: tuple[str, ...]
    extensions: tuple[tuple[str, str], ...] = ()

    @property
    def https_urls(self) -> tuple[str, ...]:
        return tuple(u for u in self.rua if u[:6].lower() == "https:")

    @property
    def mailto_addresses(self) -> tuple[str, ...]:
        """The mailto: destinations as plain addresses (percent-decoded, without ``?query``)."""
        return tuple(mailto_address(u) for u in self.rua if u[:7].lower() == "mailto:")


def mailto_address(uri: str) -> str:
    """``mailto:a%2Cb@example.com?subject=x`` -> ``a,b@example.com``."""
    path = uri.split(":", 1)[1].split("?", 1)[0]
    return urllib.parse.unquote(path)


def _check_uri(uri: str) -> str | None:
    """The URI if its scheme is one we send to; None for other schemes; error if malformed."""
    m = _URI.match(uri)
    if not m or any(c in uri for c in ",!;"):
        raise TlsRptRecordError(f"rua: {uri!r} is not a URI")
    scheme = m.group(1).lower()
    if scheme not in SCHEMES:
        return None  # RFC 8460 section 3: other schemes may be defined; we ignore them
    if scheme == "mailto":
        local, at, domain = mailto_address(uri).rpartition("@")
        if not at or not local or not domain or any(c.isspace() for c in domain):
            raise TlsRptRecordError(f"rua: {uri!r} is not a mailto: address")
    else:
        try:
            parts = urllib.parse.urlsplit(uri)
            host = parts.hostname
            parts.port  # noqa: B018  (raises ValueError for a bad port)
        except ValueError:
            raise TlsRptRecordError(f"rua: {uri!r} is not an https: URL") from None
        if not host:
            raise TlsRptRecordError(f"rua: {uri!r} has no host")
    return uri


def parse_tlsrpt_record(text: str) -> TlsRptRecord:
    """Parse one (already joined) TXT record; raise `TlsRptRecordError` if it is not valid.

    URIs of schemes other than mailto and https are skipped; a record left without any usable
    `rua` is an error. A repeated field keeps its first value.
    """
    if not _VERSION_FIELD.match(text):
        raise TlsRptRecordError(f"record does not start with {VERSION!r}")
    fields = _DELIM.split(text)
    seen: dict[str, str] = {}
    extensions: list[tuple[str, str]] = []
    for position, item in enumerate(fields[1:], start=2):
        if not item:
            if position == len(fields):
                continue  # a trailing ";" is allowed
            # The grammar (1*(field-delim tlsrpt-field) [field-delim]) has no empty field: ";;"
            # is an error here as in `_mta-sts` (RFC 8461 3.1), so the two parsers agree.
            raise TlsRptRecordError(f"record has an empty field (field {position})")
        name, eq, value = item.partition("=")
        if not eq or not _EXT_NAME.match(name):
            raise TlsRptRecordError(f"bad field {item!r}")
        if name in seen:
            continue
        if name != "rua" and not _EXT_VALUE.match(value):
            raise TlsRptRecordError(f"bad value in field {item!r}")
        seen[name] = value
        if name != "rua":
            extensions.append((name, value))
    if "rua" not in seen:
        raise TlsRptRecordError("record has no rua= field")
    uris = _RUA_SPLIT.split(seen["rua"])
    if not uris or any(not u for u in uris):
        raise TlsRptRecordError("rua= is empty or has an empty entry")
    usable = tuple(u for u in (_check_uri(u) for u in uris) if u is not None)
    if not usable:
        raise TlsRptRecordError("rua= has no mailto: or https: URI")
    return TlsRptRecord(rua=usable, extensions=tuple(extensions))


def select_tlsrpt_record(txts: Sequence[str]) -> TlsRptRecord | None:
    """Choose the domain's record from its TXT strings (each already joined): RFC 8460 section 3.

    Strings not starting with ``v=TLSRPTv1`` are discarded; unless exactly one is left the domain
    does not do TLS-RPT (None). That one not parsing raises `TlsRptRecordError`.
    """
    candidates = [t for t in txts if _VERSION_FIELD.match(t)]
    if len(candidates) != 1:
        return None
    return parse_tlsrpt_record(candidates[0])


def record_name(domain: str) -> str:
    return f"_smtp._tls.{domain.rstrip('.')}."


async def lookup_tlsrpt_record(
    domain: str, resolver: dns.asyncresolver.Resolver
) -> TlsRptRecord | None:
    """Look up and select `_smtp._tls.<domain>`. No such name or no TXT: None.

    SERVFAIL or a timeout raises `TlsRptLookupError`; a record that does not parse raises
    `TlsRptRecordError`.
    """
    name = record_name(domain)
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as exc:
        log.warning("tlsrpt.lookup_failed", domain=domain, error=str(exc))
        raise TlsRptLookupError(f"{name}: TXT look-up failed: {exc}") from exc
    txts = [b"".join(rdata.strings).decode("utf-8", errors="replace") for rdata in answer]
    return select_tlsrpt_record(txts)
