"""DANE for SMTP (RFC 7672, RFC 6698, RFC 7671): TLSA records and the check of a presented chain.

Pure: the relay looks the TLSA RRset up (with its DNSSEC state) and reads the chain the server
sent; this module says whether that chain satisfies the records. It lives in `detect/` because it
judges what a peer presented and its failures are findings with RFC 8460 result types, like the
other TLS judges here; it needs nothing but `cryptography`.

    records = [TlsaRecord.from_text("3 1 1 " + hex_digest)]
    verdict = check_chain(records, chain_der, names=("mx.example.org",), now=now)
    verdict.ok  # the session may carry mail under DANE

- DANE-EE(3): the leaf certificate (selector 0) or its public key (selector 1) matches; no name,
  expiry or chain check (RFC 7672 3.1.1).
- DANE-TA(2): the chain the server sent links the leaf, by issuer names and signatures, to a
  certificate or key that matches; the leaf and intermediates are within their validity; the leaf
  names one of the reference identifiers (RFC 7672 3.1.2, 3.2.2). A `2 1 0` record (a bare key)
  may stand for an anchor the server did not send (RFC 7671 5.2.2).
- PKIX-TA(0) and PKIX-EE(1), unknown selectors and matching types, and digests of the wrong length
  are unusable (RFC 7672 3.1.3, RFC 7671 4.1); an RRset with no usable record leaves TLS mandatory
  but unauthenticated (RFC 7672 2.2).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from detect.model import Finding, FindingKind

TLSA_INVALID = "tlsa-invalid"
DNSSEC_INVALID = "dnssec-invalid"
DANE_REQUIRED = "dane-required"

MAX_CHAIN = 10  # certificates followed from the leaf towards an anchor


class Usage(IntEnum):
    PKIX_TA = 0
    PKIX_EE = 1
    DANE_TA = 2
    DANE_EE = 3


class Selector(IntEnum):
    CERT = 0
    SPKI = 1


class MatchingType(IntEnum):
    FULL = 0
    SHA256 = 1
    SHA512 = 2


_DIGEST_SIZE = {MatchingType.SHA256: 32, MatchingType.SHA512: 64}


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    """One TLSA record: certificate usage, selector, matching type, association data."""

    usage: int
    selector: int
    matching_type: int
    data: bytes

    @classmethod
    def from_text(cls, text: str) -> TlsaRecord:
        """Parse the presentation form ``"3 1 1 0A1B..."`` (hex may be split by spaces)."""
        parts = text.split()
        if len(parts) < 4:
            raise ValueError(f"TLSA record needs 4 fields: {text!r}")
        try:
            usage, selector, mtype = (int(p) for p in parts[:3])
            data = bytes.fromhex("".join(parts[3:]))
        except ValueError:
            raise ValueError(f"TLSA record is not numbers and hex: {text!r}") from None
        if not all(0 <= n <= 255 for n in (usage, selector, mtype)):
            raise ValueError(f"TLSA fields are 0-255: {text!r}")
        return cls(usage, selector, mtype, data)

    def to_text(self) -> str:
        """The presentation form, hex in upper case as RFC 6698 and RFC 8460 write it."""
        return f"{self.usage} {self.selector} {self.matching_type} {self.data.hex().upper()}"

    @property
    def usable(self) -> bool:
        """True for DANE-TA/DANE-EE with a known selector and matching type (RFC 7672 3.1.3)."""
        if self.usage not in (Usage.DANE_TA, Usage.DANE_EE):
            return False
        if self.selector not in (Selector.CERT, Selector.SPKI):
            return False
        if self.matching_type not in (MatchingType.FULL, MatchingType.SHA256, MatchingType.SHA512):
            return False
        size = _DIGEST_SIZE.get(MatchingType(self.matching_type))
        # RFC 7671 4.1: a digest of the wrong length can never match; treat it as unusable.
        return bool(self.data) and (size is None or len(self.data) == size)

    def matches(self, cert: x509.Certificate) -> bool:
        """True when `cert` (or its public key, per the selector) matches the data."""
        return association_data(cert, self.selector, self.matching_type) == self.data


def association_data(cert: x509.Certificate, selector: int, matching_type: int) -> bytes:
    """What a TLSA record with this selector and matching type holds for `cert`."""
    if selector == Selector.CERT:
        selected = cert.public_bytes(serialization.Encoding.DER)
    elif selector == Selector.SPKI:
        selected = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        raise ValueError(f"unknown TLSA selector {selector}")
    if matching_type == MatchingType.FULL:
        return selected
    if matching_type == MatchingType.SHA256:
        return hashlib.sha256(selected).digest()
    if matching_type == MatchingType.SHA512:
        return hashlib.sha512(selected).digest()
    raise ValueError(f"unknown TLSA matching type {matching_type}")


def usable_records(records: Iterable[TlsaRecord]) -> tuple[TlsaRecord, ...]:
    return tuple(r for r in records if r.usable)


class DaneStatus(StrEnum):
    VALID = "valid"  # a usable record matched (and, for DANE-TA, the chain and name held)
    NO_USABLE_RECORDS = "no-usable-records"  # TLS mandatory, no authentication (RFC 7672 2.2)
    NO_MATCH = "no-match"  # no usable record matched the chain the server sent
    NAME_MISMATCH = "name-mismatch"  # DANE-TA chain fine, the leaf names another host
    EXPIRED = "expired"  # DANE-TA chain fine, a certificate below the anchor is out of date
    NO_CERTIFICATE = "no-certificate"  # the server sent no certificate, or one we cannot read


@dataclass(frozen=True, slots=True)
class DaneVerdict:
    """The outcome of `check_chain`. `matched` is the record that authenticated the server."""

    status: DaneStatus
    reason: str
    matched: TlsaRecord | None = None

    @property
    def ok(self) -> bool:
        return self.status is DaneStatus.VALID

    @property
    def reason_code(self) -> str:
        return f"dane-{self.status}"

    def finding(self) -> Finding | None:
        """A `tlsa-mismatch` finding (TLS-RPT tlsa-invalid) unless the check passed or there
        was nothing usable to check against."""
        if self.status in (DaneStatus.VALID, DaneStatus.NO_USABLE_RECORDS):
            return None
        return Finding(
            FindingKind.TLSA_MISMATCH,
            evidence=self.reason[:300],
            result_type=TLSA_INVALID,
            expected="a certificate chain matching the MX host's DNSSEC-signed TLSA records",
            reason_code=self.reason_code,
        )


def check_chain(
    records: Sequence[TlsaRecord],
    chain_der: Sequence[bytes],
    *,
    names: Sequence[str],
    now: dt.datetime,
) -> DaneVerdict:
    """Check the chain the server sent (leaf first, DER) against the TLSA `records`.

    `names` are the reference identifiers for DANE-TA (RFC 7672 3.2.2): the TLSA base domain and
    the MX host name it was reached from. `now` is for the DANE-TA validity check.
    """
    usable = usable_records(records)
    if not usable:
        return DaneVerdict(
            DaneStatus.NO_USABLE_RECORDS, "no usable TLSA record (TLS still required)"
        )
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as exc:
        return DaneVerdict(DaneStatus.NO_CERTIFICATE, f"unreadable certificate: {exc}")
    if not chain:
        return DaneVerdict(DaneStatus.NO_CERTIFICATE, "the server sent no certificate")
    leaf = chain[0]
    for record in usable:
        if record.usage == Usage.DANE_EE and record.matches(leaf):
            # RFC 7672 3.1.1: the key is the identity; names and dates do not matter.
            return DaneVerdict(DaneStatus.VALID, f"DANE-EE {record.to_text()[:40]}", record)
    anchors = [r for r in usable if r.usage == Usage.DANE_TA]
    if not anchors:
        return DaneVerdict(DaneStatus.NO_MATCH, "no DANE-EE record matches the certificate")
    path = _path_to_anchor(chain, anchors)
    if path is None:
        return DaneVerdict(DaneStatus.NO_MATCH, "the chain does not lead to a DANE-TA trust anchor")
    below_anchor, record = path
    for cert in below_anchor:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return DaneVerdict(
                DaneStatus.EXPIRED, f"{_subject(cert)} is not valid at {now.isoformat()}"
            )
    if not leaf_names_host(leaf, names):
        return DaneVerdict(
            DaneStatus.NAME_MISMATCH,
            f"the certificate names {', '.join(presented_names(leaf)) or 'no host'}, "
            f"not {' or '.join(names)}",
        )
    return DaneVerdict(DaneStatus.VALID, f"DANE-TA {record.to_text()[:40]}", record)


def _path_to_anchor(
    chain: Sequence[x509.Certificate], anchors: Sequence[TlsaRecord]
) -> tuple[list[x509.Certificate], TlsaRecord] | None:
    """The certificates from the leaf up to (not including) the matching anchor, and the record.

    Follows issuer names and checks each signature; intermediates must be CAs. The anchor is a
    certificate the server sent that matches a record, or a bare key in a ``2 1 0`` record that
    signed the last certificate reached.
    """
    bare_keys = [(r, _bare_key(r)) for r in anchors]
    current = chain[0]
    below: list[x509.Certificate] = []
    for _depth in range(MAX_CHAIN):
        for record in anchors:
            if record.matches(current):
                return below, record
        below.append(current)
        for record, key in bare_keys:
            if key is not None and signed_by(current, key):
                return below, record
        issuer = next(
            (
                c
                for c in chain[1:]
                if c is not current
                and c.subject == current.issuer
                and _is_ca(c)
                and signed_by(current, c.public_key())
            ),
            None,
        )
        if issuer is None:
            return None
        current = issuer
    return None


def _bare_key(record: TlsaRecord) -> PublicKeyTypes | None:
    if record.selector != Selector.SPKI or record.matching_type != MatchingType.FULL:
        return None
    try:
        return serialization.load_der_public_key(record.data)
    except (ValueError, UnsupportedAlgorithm):
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def signed_by(cert: x509.Certificate, key: PublicKeyTypes) -> bool:
    """True when `key` made the signature on `cert`."""
    tbs, signature = cert.tbs_certificate_bytes, cert.signature
    try:
        if isinstance(key, rsa.RSAPublicKey):
            padding = cert.signature_algorithm_parameters
            algorithm = cert.signature_hash_algorithm
            if algorithm is None:
                return False
            key.verify(signature, tbs, padding, algorithm)  # type: ignore[arg-type]
        elif isinstance(key, ec.EllipticCurvePublicKey):
            algorithm = cert.signature_hash_algorithm
            if algorithm is None:
                return False
            key.verify(signature, tbs, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, tbs)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def presented_names(cert: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for: its DNS SANs, else its subject CNs."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if names:
        return names
    # RFC 7672 3.2.3: the CN only when there are no DNS SANs.
    return [
        str(a.value).lower().rstrip(".")
        for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]


def name_matches(presented: str, reference: str) -> bool:
    """RFC 7672 3.2.3 / RFC 6125: exact, or ``*`` as the whole leftmost label for one label."""
    reference = reference.lower().rstrip(".")
    if presented.startswith("*."):
        head, _, rest = reference.partition(".")
        return bool(head) and rest == presented[2:]
    return presented == reference


def leaf_names_host(leaf: x509.Certificate, names: Sequence[str]) -> bool:
    return any(name_matches(p, ref) for p in presented_names(leaf) for ref in names)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "the certificate"
