"""PIPELINING (RFC 2920) to the MX: the deliverer against a real TLS MX on loopback that records
what arrived in which read. MAIL, the RCPTs and DATA go in one write when the EHLO after STARTTLS
offers PIPELINING; every reply of the group is judged (section 3.1); without PIPELINING the
commands go one at a time as before. (Bytes arriving between a reply and the reader's next turn,
which aiosmtplib alone drops, are hard to time on one event loop: test_pipelining_reader.py
feeds them by hand.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import dns.asyncresolver
import pytest

from lab.dns import LabDns
from lab.mx import LabMx
from lab.pki import LabCA
from mtasts.model import PolicyResult, PolicySource
from relay.config import Config, DeliveryConfig, DetectConfig, RelayConfig
from relay.delivery.deliverer import Deliverer, DeliveryRequest, RcptStatus
from relay.delivery.session import MxSession, Reply
from relay.tls import client_context
from tests.relay.pipelining_mx import PipeMx
from tlsrpt_emit.model import MemorySink

DOMAIN = "example.org"
RCPTS = (f"ok@{DOMAIN}", f"gone@{DOMAIN}", f"full@{DOMAIN}")
MIXED = {RCPTS[1]: b"550 5.1.1 no such user", RCPTS[2]: b"452 4.2.2 mailbox full"}
REFUSED = {r: b"550 5.1.1 no such user" for r in RCPTS}

StartPipeMx = Callable[..., Awaitable[PipeMx]]
StartMx = Callable[..., Awaitable[LabMx]]


class _NoPolicy:
    async def get(self, domain: str) -> PolicyResult:
        return PolicyResult(domain, None, PolicySource.NONE)


@pytest.fixture
async def start_pipe_mx(lab_ca: LabCA, lab_dns: LabDns) -> AsyncIterator[StartPipeMx]:
    """`await start_pipe_mx("mx1.example.org", "127.0.0.120", pref=10, port=0, **script)`: a running
    `PipeMx` named in the lab DNS as an MX of example.org."""
    async with AsyncExitStack() as stack:

        async def start(
            name: str, host: str, *, pref: int = 10, port: int = 0, **script: Any
        ) -> PipeMx:
            tls = lab_ca.issue(name).server_context()
            mx = await stack.enter_async_context(PipeMx(host, name, tls, **script).running(port))
            lab_dns.add(name, "A", host)
            lab_dns.add(DOMAIN, "MX", f"{pref} {name}.")
            return mx

        yield start


@pytest.fixture
def deliverer(
    lab_ca: LabCA, lab_resolver: dns.asyncresolver.Resolver, history_store: Any
) -> Callable[[int], Deliverer]:
    def make(port: int) -> Deliverer:
        config = Config(
            relay=RelayConfig(hostname="relay.test"),
            delivery=DeliveryConfig(port=port, connect_timeout=3, command_timeout=3),
            detect=DetectConfig(on_downgrade="defer"),
        )
        return Deliverer(
            config,
            resolver=lab_resolver,
            policy_service=_NoPolicy(),
            history_store=history_store,
            sink=MemorySink(),
            ssl_context=client_context(str(lab_ca.ca_file)),
        )

    return make


def request(*rcpts: str, n: int = 1) -> DeliveryRequest:
    body = f"Subject: {n}\r\n\r\nhello {n}\r\n".encode()
    return DeliveryRequest(f"q{n}", "alice@sender.test", rcpts or RCPTS, body)


def statuses(outcome: Any) -> dict[str, tuple[RcptStatus, str]]:
    return {r.rcpt: (r.status, r.reason[:3]) for r in outcome.rcpts}


def group_read(mx: PipeMx) -> bytes:
    """The read in which MAIL arrived."""
    [read] = [r for r in mx.reads if r.startswith(b"MAIL")]
    return read


async def deliver(
    deliverer: Deliverer, *requests: DeliveryRequest, close: bool = True
) -> list[Any]:
    try:
        return [await deliverer.deliver(r) for r in requests]
    finally:
        if close:
            await deliverer.close()


@pytest.mark.parametrize(
    "split", ["", "replies", "bytes"], ids=["one-segment", "reply-by-reply", "byte-by-byte"]
)
async def test_the_group_goes_in_one_write_and_every_reply_is_paired(
    start_pipe_mx: StartPipeMx, deliverer: Callable[[int], Deliverer], split: str
) -> None:
    mx = await start_pipe_mx("mx1.example.org", "127.0.0.120", rcpt_replies=MIXED, split=split)
    [outcome] = await deliver(deliverer(mx.port), request())
    assert statuses(outcome) == {
        RCPTS[0]: (RcptStatus.DELIVERED, "250"),
        RCPTS[1]: (RcptStatus.BOUNCED, "550"),
        RCPTS[2]: (RcptStatus.DEFERRED, "452"),
    }
    read = group_read(mx)
    # MAIL, the three RCPTs and DATA in one read: the server had answered none of them.
    assert read.split(b"\r\n")[:-1] == [
        b"MAIL FROM:<alice@sender.test>",
        *(b"RCPT TO:<" + r.encode() + b">" for r in RCPTS),
        b"DATA",
    ]
    assert mx.messages == [b"Subject: 1\r\n\r\nhello 1\r\n"]


async def test_the_session_carries_the_next_message_after_a_group(
    start_pipe_mx: StartPipeMx, deliverer: Callable[[int], Deliverer]
) -> None:
    mx = await start_pipe_mx("mx1.example.org", "127.0.0.121")
    outcomes = await deliver(deliverer(mx.port), request(RCPTS[0]), request(RCPTS[0], n=2))
    assert [o.delivered[0].rcpt for o in outcomes] == [RCPTS[0]] * 2
    assert mx.connections == 1
    assert len(mx.messages) == 2


async def test_a_refused_mail_bounces_everyone_and_resets(
    start_pipe_mx: StartPipeMx, deliverer: Callable[[int], Deliverer]
) -> None:
    mx = await start_pipe_mx("mx1.example.org", "127.0.0.122", mail_reply=b"550 5.7.1 not you")
    [outcome] = await deliver(deliverer(mx.port), request())
    assert set(statuses(outcome).values()) == {(RcptStatus.BOUNCED, "550")}
    assert group_read(mx).endswith(b"DATA\r\n")  # the RCPTs' 503 and DATA's 554 were read
    assert mx.commands[-2:] == [b"RSET", b"QUIT"]
    assert mx.messages == []


@pytest.mark.parametrize(
    ("data_reply", "dot"),
    [(b"354 go on anyway", True), (None, False)],
    ids=["DATA-354-gets-a-lone-dot", "DATA-554"],
)
async def test_every_recipient_refused(
    start_pipe_mx: StartPipeMx,
    deliverer: Callable[[int], Deliverer],
    data_reply: bytes | None,
    dot: bool,
) -> None:
    mx = await start_pipe_mx(
        "mx1.example.org", "127.0.0.123", rcpt_replies=REFUSED, data_reply=data_reply
    )
    [outcome] = await deliver(deliverer(mx.port), request())
    assert set(statuses(outcome).values()) == {(RcptStatus.BOUNCED, "550")}
    # After a 354 the transaction is ended by an empty message; the message never goes.
    assert mx.messages == ([b""] if dot else [])
    assert mx.commands[-2:] == [b"RSET", b"QUIT"]


async def test_a_refused_data_defers_the_accepted_recipients(
    start_pipe_mx: StartPipeMx, deliverer: Callable[[int], Deliverer]
) -> None:
    mx = await start_pipe_mx(
        "mx1.example.org", "127.0.0.124", rcpt_replies=MIXED, data_reply=b"451 4.3.0 later"
    )
    [outcome] = await deliver(deliverer(mx.port), request())
    assert statuses(outcome) == {
        RCPTS[0]: (RcptStatus.DEFERRED, "451"),
        RCPTS[1]: (RcptStatus.BOUNCED, "550"),
        RCPTS[2]: (RcptStatus.DEFERRED, "452"),
    }
    assert mx.messages == []
    assert mx.commands[-2:] == [b"RSET", b"QUIT"]


@pytest.mark.parametrize(
    "script",
    [{"drop_at": b"RCPT"}, {"rcpt_replies": {RCPTS[1]: b"354 what"}}],
    ids=["dropped-in-the-group", "protocol-error-in-the-group"],
)
async def test_a_failed_group_tries_the_next_mx(
    start_pipe_mx: StartPipeMx, deliverer: Callable[[int], Deliverer], script: dict[str, Any]
) -> None:
    bad = await start_pipe_mx("mx1.example.org", "127.0.0.125", **script)
    good = await start_pipe_mx("mx2.example.org", "127.0.0.126", pref=20, port=bad.port)
    [outcome] = await deliver(deliverer(bad.port), request())
    assert {r.status for r in outcome.rcpts} == {RcptStatus.DELIVERED}
    assert group_read(bad).endswith(b"DATA\r\n")
    assert bad.messages == []
    assert len(good.messages) == 1


async def test_a_group_dropped_at_the_only_mx_is_deferred(
    start_pipe_mx: StartPipeMx, deliverer: Callable[[int], Deliverer]
) -> None:
    mx = await start_pipe_mx("mx1.example.org", "127.0.0.127", drop_at=b"RCPT")
    [outcome] = await deliver(deliverer(mx.port), request())
    assert {r.status for r in outcome.rcpts} == {RcptStatus.DEFERRED}
    assert "Connection lost" in outcome.rcpts[0].reason
    assert mx.messages == []


async def test_without_pipelining_one_command_per_read(
    start_pipe_mx: StartPipeMx, deliverer: Callable[[int], Deliverer]
) -> None:
    mx = await start_pipe_mx("mx1.example.org", "127.0.0.128", pipelining=False, rcpt_replies=MIXED)
    [outcome] = await deliver(deliverer(mx.port), request())
    assert statuses(outcome)[RCPTS[1]] == (RcptStatus.BOUNCED, "550")
    commands = [read for read in mx.reads if not read.startswith((b"EHLO", b"Subject"))]
    assert [read.split(b" ")[0] for read in commands] == [
        b"MAIL",
        b"RCPT",
        b"RCPT",
        b"RCPT",
        b"DATA\r\n",
        b"QUIT\r\n",
    ]
    assert len(mx.messages) == 1


async def test_without_pipelining_no_data_after_every_recipient_refused(
    start_pipe_mx: StartPipeMx, deliverer: Callable[[int], Deliverer]
) -> None:
    mx = await start_pipe_mx(
        "mx1.example.org", "127.0.0.129", pipelining=False, rcpt_replies=REFUSED
    )
    await deliver(deliverer(mx.port), request())
    assert b"DATA" not in mx.commands
    assert mx.commands[-2:] == [b"RSET", b"QUIT"]


async def test_aiosmtpd_answering_a_group_reply_by_reply(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer: Callable[[int], Deliverer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another implementation: aiosmtpd (the lab MX) offering PIPELINING, two messages and a
    refused one on one session."""
    groups: list[int] = []
    pipeline = MxSession.pipeline

    async def counted(self: MxSession, *commands: tuple[bytes, ...]) -> list[Reply]:
        groups.append(len(commands))
        return await pipeline(self, *commands)

    monkeypatch.setattr(MxSession, "pipeline", counted)
    mx = await start_mx("mx1.example.org", "127.0.0.130")
    mx.pipelining = True
    lab_dns.add(DOMAIN, "MX", "10 mx1.example.org.")
    relay = deliverer(mx.port)
    first, second = await deliver(relay, request(), request(RCPTS[0], n=2), close=False)
    assert {r.status for r in (*first.rcpts, *second.rcpts)} == {RcptStatus.DELIVERED}
    mx.rcpt_reply = "550 5.1.1 no such user"
    [refused] = await deliver(relay, request(n=3))
    assert set(statuses(refused).values()) == {(RcptStatus.BOUNCED, "550")}
    assert [m.rcpt_tos for m in mx.messages] == [RCPTS, RCPTS[:1]]
    assert mx.connections == 1
    assert groups == [5, 3, 5]  # MAIL, the RCPTs, DATA
    assert groups == [5, 3, 5]  # MAIL, the RCPTs, DATA
