"""The lab CA: certificates for MX and policy hosts, good ones and the broken kinds attacks use."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509

from detect.dane import association_data


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A certificate and key as PEM files on disk, ready for `ssl.SSLContext.load_cert_chain`."""

    cert_file: Path
    key_file: Path

    def tlsa(self, usage: int = 3, selector: int = 1, matching_type: int = 1) -> str:
        """A TLSA record (presentation form) for the leaf certificate of this file."""
        leaf = x509.load_pem_x509_certificates(self.cert_file.read_bytes())[0]
        return tlsa_text(leaf, usage, selector, matching_type)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx


class LabCA:
    """A throwaway CA (trustme) that writes its files under `directory`.

    `ca_file` is what the relay is given as `tls.ca_file`. `untrusted()` gives a second CA that the
    relay does not trust, for intercepting attackers.
    """

    def __init__(self, directory: Path, name: str = "lab", ca: trustme.CA | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._ca = ca or trustme.CA(organization_name=f"stsguard {name} CA")
        self.ca_file = self.directory / f"{name}-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        self._serial = 0

    def issue(
        self,
        *names: str,
        expired: bool = False,
        not_after: dt.datetime | None = None,
        with_ca: bool = False,
    ) -> IssuedCert:
        """A certificate for `names` (DNS names or IP addresses). `expired` ended yesterday.
        `with_ca` sends the CA certificate too, as a DANE-TA(2) server must (RFC 7671 5.2.2)."""
        now = dt.datetime.now(dt.UTC)
        if expired:
            not_before, not_after = now - dt.timedelta(days=30), now - dt.timedelta(days=1)
        else:
            not_before = now - dt.timedelta(hours=1)
            not_after = not_after or now + dt.timedelta(days=365)
        leaf = self._ca.issue_cert(*names, not_before=not_before, not_after=not_after)
        self._serial += 1
        stem = self.directory / f"{self.name}-{self._serial}-{names[0].replace('*', 'star')}"
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        leaf.private_key_pem.write_to_path(str(key_file))
        pems = [blob.bytes() for blob in leaf.cert_chain_pems]
        if with_ca:
            pems.append(self._ca.cert_pem.bytes())
        cert_file.write_bytes(b"".join(pems))
        return IssuedCert(cert_file, key_file)

    @classmethod
    def load(cls, directory: Path, ca_file: Path, key_file: Path, name: str = "lab") -> LabCA:
        """The CA whose certificate and key `write_key` and `ca_file` left on disk: the compose
        lab's one CA, shared between the container that makes it and the ones that sign with it."""
        ca = trustme.CA.from_pem(Path(ca_file).read_bytes(), Path(key_file).read_bytes())
        return cls(directory, name, ca=ca)

    def write_key(self, path: Path) -> None:
        """Write the CA's private key (PEM, owner-only): lab use only, see `load`."""
        Path(path).touch(mode=0o600)
        self._ca.private_key_pem.write_to_path(str(path))

    def tlsa(self, usage: int = 2, selector: int = 0, matching_type: int = 1) -> str:
        """A TLSA record (presentation form) naming this CA as a DANE-TA trust anchor."""
        cert = x509.load_pem_x509_certificate(self._ca.cert_pem.bytes())
        return tlsa_text(cert, usage, selector, matching_type)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def untrusted(self) -> LabCA:
        """Another CA, not given to the relay: what an intercepting attacker signs with."""
        return LabCA(self.directory, name=f"{self.name}-rogue")


def tlsa_text(cert: x509.Certificate, usage: int, selector: int, matching_type: int) -> str:
    data = association_data(cert, selector, matching_type)
    return f"{usage} {selector} {matching_type} {data.hex()}"
