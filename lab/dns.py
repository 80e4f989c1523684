"""An authoritative DNS server on loopback, serving zones held as Python data (UDP and TCP).

Used by the tests, the lab and the benchmarks, so the relay resolves MX, TXT and policy hosts the
way it does in production. It counts every query, so tests can assert single-flight look-ups.

    dns = LabDns()
    dns.add("_mta-sts.example.org", "TXT", "v=STSv1; id=1")
    dns.add("example.org", "MX", "10 mx.example.org.")
    dns.add("mx.example.org", "A", "127.0.0.10")
    async with dns.running():           # binds 127.0.0.1 on a free port
        resolver_nameservers = [dns.address]   # "127.0.0.1:PORT"
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from collections.abc import AsyncIterator, Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from lab.dnssec import SignedZone, ZoneKey

TxtValue = str | tuple[str, ...]


def _txt_rdata_text(value: TxtValue) -> str:
    """TXT presentation format: each string quoted, so ';' and spaces survive."""
    parts = (value,) if isinstance(value, str) else value
    return " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


class LabDns:
    """Zones as data plus an asyncio UDP/TCP server answering from them."""

    def __init__(self, host: str = "127.0.0.1", ttl: int = 0) -> None:
        """`ttl` 0 (the default) keeps resolvers from caching, so a test or lab scenario that
        changes a record is seen at once; benchmarks set a real TTL."""
        self.host = host
        self.ttl = ttl
        self._records: dict[tuple[dns.name.Name, int], list[dns.rdata.Rdata]] = {}
        self._servfail: set[dns.name.Name] = set()
        self._broken: set[tuple[dns.name.Name, int]] = set()
        self.key = ZoneKey()
        self._signed: SignedZone | None = None
        self.queries: Counter[tuple[str, str]] = Counter()
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    # --- zone data ---------------------------------------------------------------------------

    def add(self, name: str, rdtype: str, value: TxtValue) -> None:
        """Add one record. TXT takes a string or a tuple of strings (a split record)."""
        key = (dns.name.from_text(name), dns.rdatatype.from_text(rdtype))
        text = _txt_rdata_text(value) if key[1] == dns.rdatatype.TXT else str(value)
        rdata = dns.rdata.from_text(dns.rdataclass.IN, key[1], text)
        self._records.setdefault(key, []).append(rdata)
        self._signed = None

    def set(self, name: str, rdtype: str, values: Iterable[TxtValue]) -> None:
        """Replace every record of this name and type."""
        self.remove(name, rdtype)
        for value in values:
            self.add(name, rdtype, value)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove the records of this name (of one type, or all)."""
        owner = dns.name.from_text(name)
        for key in list(self._records):
            if key[0] == owner and (rdtype is None or key[1] == dns.rdatatype.from_text(rdtype)):
                del self._records[key]
        self._signed = None

    def servfail(self, name: str, on: bool = True) -> None:
        """Answer SERVFAIL for this name (a broken or unreachable authority)."""
        owner = dns.name.from_text(name)
        if on:
            self._servfail.add(owner)
        else:
            self._servfail.discard(owner)

    def break_dnssec(self, name: str, rdtype: str, on: bool = True) -> None:
        """Serve this RRset with a forged (broken) signature: an attacker who rewrites answers
        on the path; a validating resolver calls it bogus and answers SERVFAIL."""
        key = (dns.name.from_text(name), dns.rdatatype.from_text(rdtype))
        if on:
            self._broken.add(key)
        else:
            self._broken.discard(key)

    @property
    def trust_anchor(self) -> str:
        """The DNSKEY a validating resolver must trust for the lab (everything is under `.`)."""
        return self.key.trust_anchor

    def signed_zone(self) -> SignedZone:
        """The records signed (again, only after a change): served to queries with the DO bit."""
        if self._signed is None:
            self._signed = SignedZone(self._records, self.key, self.ttl)
        return self._signed

    def count(self, name: str, rdtype: str) -> int:
        """How many queries for this name and type arrived."""
        return self.queries[(name.lower().rstrip("."), rdtype.upper())]

    # --- answering (pure) --------------------------------------------------------------------

    def answer(self, wire: bytes) -> bytes | None:
        """The wire-format response to one wire-format query; None for garbage."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        owner, rdtype = question.name, question.rdtype
        self.queries[
            (owner.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(rdtype))
        ] += 1
        if owner in self._servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        dnssec_ok = query.edns >= 0 and bool(query.ednsflags & dns.flags.DO)
        signed = self.signed_zone() if dnssec_ok else None
        if signed is not None:
            response.use_edns(0, dns.flags.DO, 1232)
        self._answer_into(response, owner, rdtype, signed)
        return response.to_wire()

    def _rdatas(
        self, owner: dns.name.Name, rdtype: int, signed: SignedZone | None
    ) -> list[dns.rdata.Rdata]:
        if signed is not None:
            rrset = signed.rrset(owner, rdtype)
            return list(rrset) if rrset is not None else []
        return self._records.get((owner, rdtype), [])

    def _answer_into(
        self,
        response: dns.message.Message,
        owner: dns.name.Name,
        rdtype: int,
        signed: SignedZone | None,
    ) -> None:
        """Fill `response` for `owner`/`rdtype`, following CNAMEs held here (at most 8)."""
        for _hop in range(8):
            found = self._rdatas(owner, rdtype, signed)
            cname = (
                []
                if found or rdtype == dns.rdatatype.CNAME
                else self._rdatas(owner, dns.rdatatype.CNAME, signed)
            )
            answer_type = rdtype if found else dns.rdatatype.CNAME
            if found or cname:
                response.answer.append(dns.rrset.from_rdata_list(owner, self.ttl, found or cname))
                if signed is not None:
                    broken = (owner, answer_type) in self._broken
                    response.answer.append(signed.rrsig(owner, answer_type, broken=broken))
                if found:
                    return
                owner = cname[0].target  # type: ignore[attr-defined]
                continue
            exists = owner == dns.name.root or any(
                key[0].is_subdomain(owner) for key in self._records
            )
            if not exists:
                response.set_rcode(dns.rcode.NXDOMAIN)
            if signed is not None:
                response.authority += signed.denial(owner, nxdomain=not exists)
            return

    # --- serving (I/O) -----------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` as `[dns].nameservers` takes it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def start(self, port: int = 0) -> None:
        """Bind UDP and TCP on the same port (a free one when `port` is 0)."""
        loop = asyncio.get_running_loop()
        for _attempt in range(20):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, port)
            )
            bound = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, bound)
            except OSError:
                udp.close()
                if port:
                    raise
                continue
            self._udp, self.port = udp, bound
            return
        raise OSError("could not bind UDP and TCP on one port")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None

    @contextlib.asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[LabDns]:
        await self.start(port)
        try:
            yield self
        finally:
            await self.stop()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(2)
                wire = await reader.readexactly(struct.unpack("!H", head)[0])
                reply = self.answer(wire)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: LabDns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        reply = self.server.answer(data)
        if reply is not None and self.transport is not None:
            query = dns.message.from_wire(data)
            limit = max(512, query.payload) if query.edns >= 0 else 512
            if len(reply) > limit:
                # Truncate: the client retries over TCP (RFC 1035 4.2.1).
                short = dns.message.make_response(query)
                short.flags |= dns.flags.TC | dns.flags.AA
                reply = short.to_wire()
            self.transport.sendto(reply, addr)
