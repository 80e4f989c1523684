"""A scripted MX for negotiation table tests: `FakeMx` is a session factory for `Negotiator` and
`Deliverer`; each connection replays one `Script`, and every reply goes through the same judges
as on the wire (`relay.delivery.session.judged_hello`, `judged_starttls`, `detect`)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from detect.ehlo import judge_banner
from detect.model import Finding
from detect.tls import judge_tls_failure
from relay.delivery.session import (
    BannerRefused,
    ConnectFailed,
    Hello,
    Reply,
    StartTlsStep,
    TlsStep,
    judged_hello,
    judged_starttls,
)
from relay.errors import SessionError

TLS_OK = TlsStep(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", chain_der=(b"cert",))
EXPIRED = TlsStep(judge_tls_failure(10, "certificate has expired"), cert_failure=True)
UNTRUSTED = TlsStep(judge_tls_failure(20, "unable to get local issuer"), cert_failure=True)
HANDSHAKE_FAILED = TlsStep(judge_tls_failure(None, "wrong version number"))


@dataclass(frozen=True, slots=True)
class Script:
    """What the peer does on one connection. `drop` names the step at which it goes away."""

    banner: tuple[int, str] = (220, "mx.example.org ESMTP")
    ehlo: tuple[int, str] = (250, "mx.example.org\nPIPELINING\nSTARTTLS")
    starttls: tuple[int, str] = (220, "2.0.0 Ready to start TLS")
    after_220: bytes = b""
    tls: TlsStep = TLS_OK
    ehlo_tls: tuple[int, str] = (250, "mx.example.org\nPIPELINING")
    drop: str = ""  # connect | ehlo | starttls | ehlo_tls | mail


@dataclass(slots=True)
class FakeMxSession:
    """One scripted connection; `steps` is what we sent, in order."""

    script: Script
    ip: str
    server_name: str
    steps: list[str] = field(default_factory=list)
    contexts: list[ssl.SSLContext] = field(default_factory=list)
    connected: bool = False
    keywords: frozenset[str] = frozenset()

    def _step(self, name: str) -> None:
        self.steps.append(name)
        if self.script.drop == name:
            self.connected = False
            raise ConnectFailed("refused") if name == "connect" else SessionError("dropped")

    async def open(self) -> tuple[Reply, tuple[Finding, ...]]:
        self._step("connect")
        self.connected = True
        code, text = self.script.banner
        if code != 220:
            self.connected = False
            raise BannerRefused(Reply(code, text))
        return Reply(code, text), judge_banner(code, text)

    async def hello(self, *, expect_starttls: bool) -> Hello:
        self._step("ehlo")
        return self._hello(self.script.ehlo, expect_starttls=expect_starttls)

    async def helo(self) -> None:
        self._step("helo")

    async def starttls(self) -> StartTlsStep:
        self._step("starttls")
        code, text = self.script.starttls
        return judged_starttls(code, text, self.script.after_220 if code == 220 else b"")

    async def handshake(self, context: ssl.SSLContext, *, sni: str | None = None) -> TlsStep:
        self._step("handshake")
        self.contexts.append(context)
        if self.script.tls.finding is not None:
            self.connected = False
        return self.script.tls

    async def hello_again(self) -> Hello:
        self._step("ehlo_tls")
        return self._hello(self.script.ehlo_tls, expect_starttls=False)

    async def command(self, *args: bytes) -> Reply:
        verb = args[0].decode().lower()
        self._step(verb)
        return Reply(354, "go on") if verb == "data" else Reply(250, "ok")

    async def pipeline(self, *commands: tuple[bytes, ...]) -> list[Reply]:
        """Each command as `command` would answer it, in order (a pipelined group)."""
        return [await self.command(*command) for command in commands]

    async def message_body(self, body: bytes) -> Reply:
        self._step("body")
        return Reply(250, "queued")

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.keywords

    @property
    def sending_ip(self) -> str:
        return "127.0.0.1" if "connect" in self.steps else ""

    @property
    def is_connected(self) -> bool:
        return self.connected

    def close(self) -> None:
        self.connected = False

    async def quit(self, *, grace: float = 1.0) -> None:
        if self.connected:
            self.steps.append("quit")
        self.connected = False

    def _hello(self, reply: tuple[int, str], *, expect_starttls: bool) -> Hello:
        code, text = reply
        if code == 250:
            self.keywords = frozenset(line.split()[0].lower() for line in text.split("\n")[1:])
        return judged_hello(code, text, expect_starttls=expect_starttls)


class FakeMx:
    """A session factory replaying `scripts` one per connection (the last one again after)."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts or (Script(),)
        self.sessions: list[FakeMxSession] = []

    def __call__(self, ip: str, host: str) -> FakeMxSession:
        script = self.scripts[min(len(self.sessions), len(self.scripts) - 1)]
        session = FakeMxSession(script, ip, host)
        self.sessions.append(session)
        return session

    @property
    def steps(self) -> list[list[str]]:
        return [s.steps for s in self.sessions]
