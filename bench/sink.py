"""A fast SMTP sink with STARTTLS that counts the messages it accepts.

Postfix's own `smtp-sink` cannot do TLS, so every throughput row of `bench/run` (the ceiling,
Postfix and stsguard) delivers into this one process. It answers every command with success,
offers STARTTLS until the session is encrypted and counts a message at each end of DATA.

    python bench/sink.py --listen 127.0.0.20:2526 --cert sink.crt --key sink.key \
        --control 127.0.0.20:2599

The control port answers one line per request: ``COUNT`` -> messages, ``TLS`` -> sessions that
finished a TLS handshake, ``CPU`` -> this process's CPU seconds, ``PROBES`` -> ``N:T`` for each
latency-probe message (``probe-N@...``) since the last ask, T its 250 on `time.monotonic`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import ssl
import time


class Counters:
    """What the sink has seen, read through the control port."""

    def __init__(self) -> None:
        self.messages = 0
        self.sessions = 0
        self.tls_sessions = 0
        # The harness's latency probe: ``probe-N@...`` -> time.monotonic() of our 250 after DATA
        # (not counted in `messages`).
        self.probes: dict[str, float] = {}


class SinkProtocol(asyncio.Protocol):
    """One SMTP session: line commands, DATA bodies, STARTTLS through `loop.start_tls`."""

    def __init__(
        self,
        counters: Counters,
        tls: ssl.SSLContext | None,
        name: bytes,
        *,
        pipelining: bool = True,
    ) -> None:
        self.pipelining = pipelining
        self.counters = counters
        self.tls = tls
        self.name = name
        self.buffer = bytearray()
        self.in_data = False
        self.encrypted = False
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.probe = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.counters.sessions += 1
        self.transport.write(b"220 " + self.name + b" ESMTP bench sink\r\n")  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.paused:
            return
        self._process()

    def _process(self) -> None:
        out: list[bytes] = []
        buf = self.buffer
        while True:
            if self.in_data:
                end = buf.find(b"\r\n.\r\n")
                if end < 0:
                    # Keep only what could be the start of the terminator.
                    if len(buf) > 4:
                        del buf[: len(buf) - 4]
                    break
                del buf[: end + 5]
                self.in_data = False
                if self.probe and len(self.counters.probes) < 100_000:
                    self.counters.probes[self.probe] = time.monotonic()
                else:
                    self.counters.messages += 1
                self.probe = ""
                out.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            eol = buf.find(b"\n")
            if eol < 0:
                if len(buf) > 4096:
                    out.append(b"500 line too long\r\n")
                    buf.clear()
                break
            line = bytes(buf[:eol]).rstrip(b"\r")
            del buf[: eol + 1]
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                lines = [self.name, b"PIPELINING", b"8BITMIME", b"SIZE 104857600"]
                if not self.pipelining:
                    lines.remove(b"PIPELINING")
                if self.tls is not None and not self.encrypted:
                    lines.append(b"STARTTLS")
                if verb == b"HELO":
                    out.append(b"250 " + self.name + b"\r\n")
                else:
                    out.append(
                        b"".join(b"250-" + x + b"\r\n" for x in lines[:-1])
                        + b"250 "
                        + lines[-1]
                        + b"\r\n"
                    )
            elif verb == b"DATA":
                self.in_data = True
                # "\r\n" before the body so that a body starting with ".\r\n" still ends it.
                buf[:0] = b"\r\n"
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                self._flush(out)
                if self.transport is not None:
                    self.transport.close()
                return
            elif verb == b"STAR" and line.upper() == b"STARTTLS":
                if self.tls is None or self.encrypted:
                    out.append(b"454 4.7.0 TLS not available\r\n")
                    continue
                out.append(b"220 2.0.0 Ready to start TLS\r\n")
                self._flush(out)
                buf.clear()  # RFC 3207 4: discard anything pipelined after STARTTLS
                self.paused = True
                asyncio.get_running_loop().create_task(self._start_tls())
                return
            elif verb == b"RSET" or verb == b"NOOP":
                out.append(b"250 2.0.0 Ok\r\n")
            elif verb in (b"MAIL", b"RCPT"):
                if line[:14].upper() == b"RCPT TO:<PROBE":
                    self.probe = line[15:].split(b"@", 1)[0].decode(errors="replace")
                out.append(b"250 2.1.0 Ok\r\n")
            else:
                out.append(b"502 5.5.2 Error: command not recognized\r\n")
        self._flush(out)

    def _flush(self, out: list[bytes]) -> None:
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        assert self.tls is not None
        try:
            new = await loop.start_tls(self.transport, self, self.tls, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError):
            self.transport.close()
            return
        if new is None:
            return
        self.transport = new
        self.encrypted = True
        self.counters.tls_sessions += 1
        self.paused = False
        if self.buffer:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve_control(counters: Counters, host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                cmd = line.strip().upper()
                if cmd == b"COUNT":
                    value = str(counters.messages)
                elif cmd == b"TLS":
                    value = str(counters.tls_sessions)
                elif cmd == b"SESSIONS":
                    value = str(counters.sessions)
                elif cmd == b"PROBES":
                    value = " ".join(f"{k}:{v:.6f}" for k, v in counters.probes.items())
                    counters.probes.clear()
                elif cmd == b"CPU":
                    t = os.times()
                    value = f"{t.user + t.system:.3f}"
                else:
                    value = "ERR"
                writer.write(value.encode() + b"\n")
                await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port for SMTP")
    parser.add_argument("--control", required=True, help="host:port for the counter queries")
    parser.add_argument("--cert", help="certificate chain (PEM); without it no STARTTLS")
    parser.add_argument("--key", help="private key (PEM)")
    parser.add_argument("--name", default="sink.bench.test")
    parser.add_argument(
        "--no-pipelining", action="store_true", help="do not offer PIPELINING (RFC 2920)"
    )
    args = parser.parse_args()
    tls: ssl.SSLContext | None = None
    if args.cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    counters = Counters()
    loop = asyncio.get_running_loop()
    host, port = args.listen.rsplit(":", 1)
    name = args.name.encode()
    server = await loop.create_server(
        lambda: SinkProtocol(counters, tls, name, pipelining=not args.no_pipelining),
        host,
        int(port),
        backlog=4096,
    )
    chost, cport = args.control.rsplit(":", 1)
    control = await serve_control(counters, chost, int(cport))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    control.close()


if __name__ == "__main__":
    asyncio.run(main())
