"""DANE TLSA matching (RFC 7672 3.1, RFC 6698 2.1, RFC 7671 5): table tests over real certificates.

A root CA, an intermediate and leaves made with trustme, as a server would present them.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from detect.dane import (
    DaneStatus,
    TlsaRecord,
    association_data,
    check_chain,
    name_matches,
    presented_names,
    signed_by,
)
from detect.model import FindingKind

MX = "mx.dane.test"
NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Pki:
    root: x509.Certificate
    inter: x509.Certificate
    leaf: x509.Certificate
    other_leaf: x509.Certificate  # same intermediate, another host name
    expired_leaf: x509.Certificate
    rogue_leaf: x509.Certificate  # an attacker's CA
    rogue_root: x509.Certificate

    @property
    def chain(self) -> list[bytes]:
        return [_der(self.leaf), _der(self.inter)]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _leaf(ca: trustme.CA, *names: str, **kw: dt.datetime) -> x509.Certificate:
    issued = ca.issue_cert(*names, **kw)  # type: ignore[arg-type]
    return x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())


def _ca_cert(ca: trustme.CA) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.cert_pem.bytes())


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = trustme.CA()
    inter = root.create_child_ca()
    rogue = trustme.CA()
    return Pki(
        root=_ca_cert(root),
        inter=_ca_cert(inter),
        leaf=_leaf(inter, MX),
        other_leaf=_leaf(inter, "mx.elsewhere.test"),
        expired_leaf=_leaf(
            inter, MX, not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1)
        ),
        rogue_leaf=_leaf(rogue, MX),
        rogue_root=_ca_cert(rogue),
    )


def _record(usage: int, selector: int, mtype: int, cert: x509.Certificate) -> TlsaRecord:
    return TlsaRecord(usage, selector, mtype, association_data(cert, selector, mtype))


COMBINATIONS = list(itertools.product((0, 1, 2, 3), (0, 1), (0, 1, 2)))


def _expected_for_leaf_record(usage: int) -> DaneStatus:
    # A record for the server's own certificate: DANE-EE matches; DANE-TA matches too (the leaf
    # is its own anchor) and passes the name check; PKIX usages are unusable.
    return DaneStatus.VALID if usage in (2, 3) else DaneStatus.NO_USABLE_RECORDS


@pytest.mark.parametrize(("usage", "selector", "mtype"), COMBINATIONS)
def test_dane_record_for_the_leaf(pki: Pki, usage: int, selector: int, mtype: int) -> None:
    verdict = check_chain(
        [_record(usage, selector, mtype, pki.leaf)], pki.chain, names=(MX,), now=NOW
    )
    assert verdict.status is _expected_for_leaf_record(usage)


@pytest.mark.parametrize(("usage", "selector", "mtype"), COMBINATIONS)
def test_dane_record_for_the_intermediate(pki: Pki, usage: int, selector: int, mtype: int) -> None:
    verdict = check_chain(
        [_record(usage, selector, mtype, pki.inter)], pki.chain, names=(MX,), now=NOW
    )
    want = {0: DaneStatus.NO_USABLE_RECORDS, 1: DaneStatus.NO_USABLE_RECORDS}.get(
        usage, DaneStatus.VALID if usage == 2 else DaneStatus.NO_MATCH
    )
    assert verdict.status is want


@pytest.mark.parametrize(("usage", "selector", "mtype"), COMBINATIONS)
def test_dane_record_for_a_root_the_server_did_not_send(
    pki: Pki, usage: int, selector: int, mtype: int
) -> None:
    # Only a full public key (2 1 0) can stand for an anchor missing from the chain (RFC 7671
    # 5.2.2); a digest or a certificate the server did not send cannot be matched.
    verdict = check_chain(
        [_record(usage, selector, mtype, pki.root)], pki.chain, names=(MX,), now=NOW
    )
    if usage in (0, 1):
        want = DaneStatus.NO_USABLE_RECORDS
    elif (usage, selector, mtype) == (2, 1, 0):
        want = DaneStatus.VALID
    else:
        want = DaneStatus.NO_MATCH
    assert verdict.status is want


@pytest.mark.parametrize(("usage", "selector", "mtype"), COMBINATIONS)
def test_dane_root_sent_in_the_chain(pki: Pki, usage: int, selector: int, mtype: int) -> None:
    chain = [*pki.chain, _der(pki.root)]
    verdict = check_chain([_record(usage, selector, mtype, pki.root)], chain, names=(MX,), now=NOW)
    want = {2: DaneStatus.VALID, 3: DaneStatus.NO_MATCH}.get(usage, DaneStatus.NO_USABLE_RECORDS)
    assert verdict.status is want


@pytest.mark.parametrize(("usage", "selector", "mtype"), [c for c in COMBINATIONS if c[0] >= 2])
def test_dane_attacker_certificate_never_matches(
    pki: Pki, usage: int, selector: int, mtype: int
) -> None:
    # The attacker presents a certificate for the right name from its own CA, sending that CA too.
    chain = [_der(pki.rogue_leaf), _der(pki.rogue_root)]
    for anchor in (pki.leaf, pki.inter, pki.root):
        verdict = check_chain(
            [_record(usage, selector, mtype, anchor)], chain, names=(MX,), now=NOW
        )
        assert verdict.status is DaneStatus.NO_MATCH
        finding = verdict.finding()
        assert finding is not None
        assert finding.kind is FindingKind.TLSA_MISMATCH
        assert finding.result_type == "tlsa-invalid"


def test_dane_ee_ignores_names_and_expiry(pki: Pki) -> None:
    for leaf in (pki.other_leaf, pki.expired_leaf):
        record = _record(3, 1, 1, leaf)
        verdict = check_chain([record], [_der(leaf), _der(pki.inter)], names=(MX,), now=NOW)
        assert verdict.ok, verdict


def test_dane_ta_checks_the_name(pki: Pki) -> None:
    record = _record(2, 0, 1, pki.inter)
    chain = [_der(pki.other_leaf), _der(pki.inter)]
    verdict = check_chain([record], chain, names=(MX,), now=NOW)
    assert verdict.status is DaneStatus.NAME_MISMATCH
    assert "mx.elsewhere.test" in verdict.reason
    # RFC 7672 3.2.2: the TLSA base domain (after CNAME) is a reference identifier too.
    assert check_chain([record], chain, names=(MX, "mx.elsewhere.test"), now=NOW).ok


def test_dane_ta_checks_expiry_below_the_anchor(pki: Pki) -> None:
    record = _record(2, 1, 1, pki.inter)
    verdict = check_chain([record], [_der(pki.expired_leaf), _der(pki.inter)], names=(MX,), now=NOW)
    assert verdict.status is DaneStatus.EXPIRED


def test_dane_ta_needs_the_link_the_server_sent(pki: Pki) -> None:
    # The anchor is the root, but the intermediate between is missing: no path.
    verdict = check_chain([_record(2, 0, 1, pki.root)], [_der(pki.leaf)], names=(MX,), now=NOW)
    assert verdict.status is DaneStatus.NO_MATCH
    # A certificate with the anchor's name but another key does not link (signatures checked).
    assert signed_by(pki.leaf, pki.inter.public_key())
    assert not signed_by(pki.leaf, pki.rogue_root.public_key())


def test_dane_one_good_record_among_bad_ones_is_enough(pki: Pki) -> None:
    records = [
        _record(3, 1, 1, pki.rogue_leaf),
        _record(1, 1, 1, pki.leaf),
        TlsaRecord(3, 1, 1, b"\x00" * 31),  # wrong digest length: unusable
        _record(3, 0, 2, pki.leaf),
    ]
    verdict = check_chain(records, pki.chain, names=(MX,), now=NOW)
    assert verdict.ok
    assert verdict.matched == records[3]


@pytest.mark.parametrize(
    "record",
    [
        TlsaRecord(0, 0, 1, b"\x01" * 32),
        TlsaRecord(1, 1, 1, b"\x01" * 32),
        TlsaRecord(3, 2, 1, b"\x01" * 32),  # unknown selector
        TlsaRecord(3, 1, 3, b"\x01" * 32),  # unknown matching type
        TlsaRecord(3, 1, 1, b"\x01" * 20),  # SHA-256 digest of the wrong size
        TlsaRecord(2, 1, 2, b"\x01" * 32),  # SHA-512 digest of the wrong size
        TlsaRecord(3, 1, 0, b""),
        TlsaRecord(255, 1, 1, b"\x01" * 32),
    ],
)
def test_dane_unusable_records(pki: Pki, record: TlsaRecord) -> None:
    assert not record.usable
    verdict = check_chain([record], pki.chain, names=(MX,), now=NOW)
    assert verdict.status is DaneStatus.NO_USABLE_RECORDS
    assert verdict.finding() is None  # RFC 7672 2.2: TLS is still mandatory, decided elsewhere


def test_dane_no_certificate(pki: Pki) -> None:
    record = _record(3, 1, 1, pki.leaf)
    for chain in ([], [b"junk"]):
        verdict = check_chain([record], chain, names=(MX,), now=NOW)
        assert verdict.status is DaneStatus.NO_CERTIFICATE


def test_dane_presentation_form_round_trip(pki: Pki) -> None:
    record = _record(3, 1, 1, pki.leaf)
    text = record.to_text()
    assert text == "3 1 1 " + record.data.hex().upper()
    assert TlsaRecord.from_text(text) == record
    # dnspython writes long data in chunks separated by spaces, in lower case.
    split = f"3 1 1 {record.data.hex()[:20]} {record.data.hex()[20:]}"
    assert TlsaRecord.from_text(split) == record


@pytest.mark.parametrize("text", ["", "3 1 1", "3 1 x 00", "3 1 1 zz", "300 1 1 00"])
def test_dane_bad_presentation_form(text: str) -> None:
    with pytest.raises(ValueError, match="TLSA"):
        TlsaRecord.from_text(text)


@pytest.mark.parametrize(
    ("presented", "reference", "ok"),
    [
        ("mx.dane.test", "mx.dane.test", True),
        ("mx.dane.test", "MX.Dane.Test.", True),
        ("*.dane.test", "mx.dane.test", True),
        ("*.dane.test", "dane.test", False),
        ("*.dane.test", "a.mx.dane.test", False),
        ("mx.dane.test", "mx2.dane.test", False),
        ("m*.dane.test", "mx.dane.test", False),
    ],
)
def test_dane_name_match(presented: str, reference: str, ok: bool) -> None:
    assert name_matches(presented, reference) is ok


def test_dane_cn_only_without_dns_sans() -> None:
    ca = trustme.CA()
    with_san = _leaf(ca, MX, common_name="cn.dane.test")
    assert presented_names(with_san) == [MX]
