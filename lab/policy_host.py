"""An HTTPS MTA-STS policy host on loopback, serving `/.well-known/mta-sts.txt` per domain.

Each domain gets its own certificate for `mta-sts.<domain>` from the lab CA, chosen by SNI, and
can be broken on purpose (`set_failure`) the ways RFC 8461 section 3.3 fetchers must survive:

    host = PolicyHost(lab_ca)
    host.set_policy("example.org", POLICY_TEXT)
    host.set_failure("broken.example", Failure.EXPIRED_CERT)
    async with host.running():
        ... host.port ...        # lab DNS: mta-sts.example.org A 127.0.0.1
    host.requests["example.org"]  # how many GETs arrived for that domain

A tiny HTTP/1.1 responder on asyncio streams: one request per connection, then close.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum

from lab.pki import IssuedCert, LabCA

WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"
OVERSIZE = 70 * 1024  # over the 64 KiB a fetcher may accept
_REASONS = {200: "OK", 301: "Moved Permanently", 404: "Not Found", 500: "Internal Server Error"}


class Failure(StrEnum):
    """Ways to break one domain's policy host."""

    DOWN = "down"  # the TLS handshake is refused (connection closed with an alert)
    REDIRECT = "redirect"  # 301 to another URL, with a valid policy as the body
    STATUS_404 = "status-404"
    STATUS_500 = "status-500"
    HTML = "html"  # served as text/html
    OVERSIZE = "oversize"  # a body of 70 KiB without Content-Length
    STALL = "stall"  # reads the request and never answers
    EXPIRED_CERT = "expired-cert"
    WRONG_NAME_CERT = "wrong-name-cert"  # a certificate for another name
    UNTRUSTED_CERT = "untrusted-cert"  # signed by a CA the client does not trust


@dataclass(frozen=True, slots=True)
class Served:
    """What one domain's policy host answers."""

    text: str
    content_type: str = "text/plain"
    status: int = 200


class PolicyHost:
    """HTTPS server for `mta-sts.<domain>` of many domains on one address and port."""

    def __init__(self, ca: LabCA, host: str = "127.0.0.1", cert: IssuedCert | None = None) -> None:
        self.ca = ca
        self.host = host
        self.port = 0
        self.requests: Counter[str] = Counter()
        self.served: dict[str, Served] = {}
        self.failures: dict[str, Failure] = {}
        self._one_cert = cert.server_context() if cert else None
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._rogue: LabCA | None = None
        self._default = self._context(ca.issue("policy-host.lab.invalid"))
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # --- set-up ------------------------------------------------------------------------------

    def set_policy(
        self, domain: str, text: str, *, content_type: str = "text/plain", status: int = 200
    ) -> None:
        """Serve `text` for `domain` (and clear any failure set for it)."""
        domain = _domain(domain)
        self.served[domain] = Served(text, content_type, status)
        self.failures.pop(domain, None)
        self._ensure_cert(domain)

    def set_failure(self, domain: str, kind: Failure | str | None) -> None:
        """Break `domain`'s host in one way (None repairs it)."""
        domain = _domain(domain)
        if kind is None:
            self.failures.pop(domain, None)
            self._contexts.pop(domain, None)
            self._ensure_cert(domain)
            return
        failure = Failure(kind)
        self.failures[domain] = failure
        name = f"mta-sts.{domain}"
        if failure is Failure.EXPIRED_CERT:
            self._contexts[domain] = self._context(self.ca.issue(name, expired=True))
        elif failure is Failure.WRONG_NAME_CERT:
            self._contexts[domain] = self._context(self.ca.issue(f"mta-sts.wrong-{domain}"))
        elif failure is Failure.UNTRUSTED_CERT:
            if self._rogue is None:
                self._rogue = self.ca.untrusted()
            self._contexts[domain] = self._context(self._rogue.issue(name))
        else:
            self._ensure_cert(domain)

    def remove(self, domain: str) -> None:
        """Serve nothing for `domain` any more (404)."""
        domain = _domain(domain)
        self.served.pop(domain, None)
        self.failures.pop(domain, None)

    def _ensure_cert(self, domain: str) -> None:
        if self._one_cert is None and domain not in self._contexts:
            self._contexts[domain] = self._context(self.ca.issue(f"mta-sts.{domain}"))

    def _context(self, cert: IssuedCert) -> ssl.SSLContext:
        ctx = cert.server_context()
        ctx.sni_callback = self._select
        return ctx

    def _select(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        """SNI: the certificate of the domain asked for; a refused handshake when it is down."""
        domain = _domain(name or "")
        if self.failures.get(domain) is Failure.DOWN:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        chosen = self._one_cert or self._contexts.get(domain)
        if chosen is not None:
            sslobj.context = chosen
        return None

    # --- serving -----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.host

    async def start(self, port: int = 0) -> None:
        server_ctx = self._one_cert or self._default
        if self._one_cert is not None:
            self._one_cert.sni_callback = self._select
        self._server = await asyncio.start_server(
            self._accept, self.host, port, ssl=server_ctx, ssl_handshake_timeout=5
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    @contextlib.asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[PolicyHost]:
        await self.start(port)
        try:
            yield self
        finally:
            await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()  # not awaited: a TLS close must not hang the server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if not line:
            return
        _method, path, _version = line.decode("latin-1").strip().split(" ", 2)
        headers: dict[str, str] = {}
        while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        sni = writer.get_extra_info("ssl_object")
        host_name = headers.get("host", "") or (sni.server_hostname if sni else "") or ""
        domain = _domain(host_name.rsplit(":", 1)[0] if "]" not in host_name else host_name)
        self.requests[domain] += 1
        failure = self.failures.get(domain)
        served = self.served.get(domain)
        if failure is Failure.STALL:
            await asyncio.Event().wait()  # until stop() cancels us
        if path.split("?", 1)[0] != WELL_KNOWN_PATH or served is None:
            await _respond(writer, 404, "text/plain", b"not found\n")
            return
        body = served.text.encode("utf-8")
        if failure is Failure.REDIRECT:
            extra = {"Location": f"https://elsewhere.{domain}{WELL_KNOWN_PATH}"}
            await _respond(writer, 301, "text/plain", body, extra)
        elif failure is Failure.STATUS_404:
            await _respond(writer, 404, "text/plain", body)
        elif failure is Failure.STATUS_500:
            await _respond(writer, 500, "text/plain", body)
        elif failure is Failure.HTML:
            await _respond(writer, 200, "text/html", body)
        elif failure is Failure.OVERSIZE:
            filler = b"# " + b"x" * 1021 + b"\n"
            await _respond(
                writer, 200, "text/plain", body + filler * (OVERSIZE // 1024), None, False
            )
        else:
            await _respond(writer, served.status, served.content_type, body)


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    content_type: str,
    body: bytes,
    extra: dict[str, str] | None = None,
    with_length: bool = True,
) -> None:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}"]
    if with_length:
        head.append(f"Content-Length: {len(body)}")
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    head += ["Cache-Control: max-age=86400", "Connection: close", "", ""]
    writer.write("\r\n".join(head).encode("latin-1"))
    for start in range(0, len(body), 16384):
        writer.write(body[start : start + 16384])
        await writer.drain()
    await writer.drain()


def _domain(name: str) -> str:
    """The policy domain of a host name: without ``mta-sts.``, lower-case, no trailing dot."""
    name = name.strip().rstrip(".").lower()
    return name.removeprefix("mta-sts.")
