"""DNSSEC for the lab DNS: its records signed as one zone at the root, with NSEC denial proofs.

The lab DNS answers for every name it holds, so for a validating resolver (`lab/unbound.py`) it
is the root: one zone ``.``, one ECDSA P-256 key (the resolver's trust anchor), RRSIGs from
`dns.dnssec.sign_zone` and an NSEC chain. The zone is signed again lazily after a record changed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import dns.dnssec
import dns.dnssectypes
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.RRSIG
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = dns.name.root
# The last field (the negative-caching TTL, RFC 2308) follows the zone's TTL: 0 in the lab, where
# scenarios change records between messages, a real one where a benchmark sets it, so "no AAAA"
# is cached like any other answer there.
_SOA = "ns.lab. hostmaster.lab. 1 3600 600 86400 {minimum}"
_NS = "ns.lab."

Records = Mapping[tuple[dns.name.Name, int], list[dns.rdata.Rdata]]


class ZoneKey:
    """The lab root zone's key (KSK and ZSK in one) and its trust anchor for the resolver."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.dnskey = dns.dnssec.make_dnskey(
            self.private_key.public_key(),
            dns.dnssectypes.Algorithm.ECDSAP256SHA256,
            flags=dns.rdtypes.dnskeybase.Flag.ZONE | dns.rdtypes.dnskeybase.Flag.SEP,
        )

    @property
    def trust_anchor(self) -> str:
        """The anchor line for unbound's `trust-anchor:` (``. DNSKEY 257 3 13 ...``)."""
        return f". DNSKEY {self.dnskey.to_text()}"


class SignedZone:
    """A signed snapshot of the lab's records, with what a validating resolver needs."""

    def __init__(self, records: Records, key: ZoneKey, ttl: int) -> None:
        self.ttl = ttl
        zone = dns.zone.Zone(ROOT, relativize=False)
        with zone.writer() as txn:
            txn.add(ROOT, max(ttl, 0), _rdata("SOA", _SOA.format(minimum=max(ttl, 0))))
            txn.add(ROOT, max(ttl, 0), _rdata("NS", _NS))
            for (name, _rdtype), rdatas in records.items():
                for rdata in rdatas:
                    txn.add(name, ttl, rdata)
        now = dt.datetime.now(dt.UTC)
        dns.dnssec.sign_zone(
            zone,
            keys=[(key.private_key, key.dnskey)],
            inception=now - dt.timedelta(hours=1),
            expiration=now + dt.timedelta(days=7),
            dnskey_ttl=ttl,
        )
        self.zone = zone
        self._owners = sorted(zone.nodes.keys())

    def rrset(self, name: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
        rdataset = self.zone.get_rdataset(name, dns.rdatatype.RdataType(rdtype))
        if rdataset is None:
            return None
        return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))

    def rrsig(self, name: dns.name.Name, rdtype: int, *, broken: bool = False) -> dns.rrset.RRset:
        """The RRSIG over `name`/`rdtype`; `broken` flips its signature (an attacker's forgery)."""
        rdataset = self.zone.get_rdataset(
            name, dns.rdatatype.RRSIG, covers=dns.rdatatype.RdataType(rdtype)
        )
        sigs = list(rdataset) if rdataset is not None else []
        if broken:
            sigs = [_break(sig) for sig in sigs]
        ttl = rdataset.ttl if rdataset is not None else self.ttl
        return dns.rrset.from_rdata_list(name, ttl, sigs)

    def exists(self, name: dns.name.Name) -> bool:
        """True when `name` owns records or is an empty non-terminal above some."""
        return any(owner.is_subdomain(name) for owner in self._owners)

    def denial(self, qname: dns.name.Name, *, nxdomain: bool) -> list[dns.rrset.RRset]:
        """The authority section of a negative answer: SOA and the NSEC proofs (RFC 4035 3.1.3)."""
        proof: list[dns.rrset.RRset] = []
        soa = self.rrset(ROOT, dns.rdatatype.SOA)
        assert soa is not None
        proof += [soa, self.rrsig(ROOT, dns.rdatatype.SOA)]
        owners: list[dns.name.Name] = []
        if self.zone.get_node(qname) is not None:
            owners.append(qname)  # NODATA at an existing name: its own NSEC
        else:
            owners.append(self._covering(qname))
            if nxdomain:
                encloser = qname.parent()
                while encloser != ROOT and not self.exists(encloser):
                    encloser = encloser.parent()
                owners.append(self._covering(dns.name.Name((b"*", *encloser.labels))))
        for owner in dict.fromkeys(owners):
            nsec = self.rrset(owner, dns.rdatatype.NSEC)
            if nsec is not None:
                proof += [nsec, self.rrsig(owner, dns.rdatatype.NSEC)]
        return proof

    def _covering(self, qname: dns.name.Name) -> dns.name.Name:
        """The NSEC owner just before `qname` in canonical order (wrapping to the last one)."""
        before = [owner for owner in self._owners if owner < qname]
        return before[-1] if before else self._owners[-1]


def _rdata(rdtype: str, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)


def _break(sig: dns.rdata.Rdata) -> dns.rdata.Rdata:
    assert isinstance(sig, dns.rdtypes.ANY.RRSIG.RRSIG)
    mangled = bytes(b ^ 0xFF for b in sig.signature)
    return sig.replace(signature=mangled)
