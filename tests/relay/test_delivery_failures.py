"""How delivery fails: replies by class, MX hosts that drop or break the protocol, address limits,
mail loops, and what each attempt reports. Real lab MX hosts on loopback, named in the lab DNS."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import dns.asyncresolver
import pytest
import structlog
from structlog.testing import LogCapture

from detect.history import HostHistory, MemoryTlsHistoryStore
from lab.dns import LabDns
from lab.mx import CertKind
from lab.pki import LabCA
from mtasts.model import Mode, PolicyResult
from relay.config import Config, RelayConfig
from relay.delivery.deliverer import Deliverer, DeliveryRequest, RcptStatus
from relay.tls import client_context
from tests.relay.test_delivery import (
    DOMAIN,
    StartMx,
    StubPolicies,
    make_config,
    mx_records,
    request,
    sts,
)
from tlsrpt_emit.model import MemorySink

MX1, MX2 = "mx1.example.org", "mx2.example.org"


class ThreadRecordingHistory(MemoryTlsHistoryStore):
    """Remembered TLS in memory, noting the thread of every call (never the event loop's)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []

    def get(self, host: str) -> HostHistory | None:
        self.threads.append(threading.current_thread())
        return super().get(host)

    def record(self, host: str, *, offered_starttls: bool, valid_cert: bool, now: float) -> None:
        self.threads.append(threading.current_thread())
        super().record(host, offered_starttls=offered_starttls, valid_cert=valid_cert, now=now)


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Log entries with their bound context (mx_host, mx_ip, rcpts, ...) and `log_level`."""
    capture = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        yield capture.entries
    finally:
        structlog.reset_defaults()


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def history() -> ThreadRecordingHistory:
    return ThreadRecordingHistory()


@pytest.fixture
def deliverer_for(
    lab_ca: LabCA,
    lab_resolver: dns.asyncresolver.Resolver,
    sink: MemorySink,
    history: ThreadRecordingHistory,
) -> Callable[..., Deliverer]:
    def make(config: Config, policy: PolicyResult | None = None) -> Deliverer:
        return Deliverer(
            config,
            resolver=lab_resolver,
            policy_service=StubPolicies(policy),
            history_store=history,
            sink=sink,
            ssl_context=client_context(str(lab_ca.ca_file)),
        )

    return make


def two_rcpts(n: int = 1) -> DeliveryRequest:
    return replace(request(n), rcpts=(f"bob@{DOMAIN}", f"carol@{DOMAIN}"))


# --- replies by class -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mail_reply", "rcpt_reply"),
    [
        (None, "252 2.1.5 cannot verify, will attempt delivery"),
        (None, "251 2.1.5 user not local; will forward"),
        (None, "220 2.0.0 odd but positive"),
        ("251 2.1.0 sender ok", None),
        ("200 ok", None),
    ],
)
async def test_any_2xx_to_mail_or_rcpt_is_acceptance_and_data_follows(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer_for: Callable[..., Deliverer],
    mail_reply: str | None,
    rcpt_reply: str | None,
) -> None:
    mx = await start_mx(MX1, "127.0.3.1", mail_reply=mail_reply, rcpt_reply=rcpt_reply)
    mx_records(lab_dns, (10, MX1))
    deliverer = deliverer_for(make_config(mx.port))
    outcome = await deliverer.deliver(two_rcpts())
    await deliverer.close()
    assert [r.status for r in outcome.rcpts] == [RcptStatus.DELIVERED] * 2
    # The message really went: delivered means the MX has it, never "accepted without DATA".
    [message] = mx.messages
    assert message.rcpt_tos == (f"bob@{DOMAIN}", f"carol@{DOMAIN}")
    assert b"hello 1" in message.data


@pytest.mark.parametrize(
    ("mail_reply", "rcpt_reply"),
    [
        ("this is not smtp", None),  # no code at all
        ("2_0 ok", None),  # a code aiosmtplib would read as 20
        ("354 go ahead", None),  # a 3xx where none belongs
        ("650 five hundred and fifty", None),  # no such class
        (None, "250-fine\r\n550 5.1.1 but no"),  # a multi-line reply whose codes disagree
        (None, "199 preliminary"),
    ],
)
async def test_garbage_reply_is_a_protocol_error_and_the_next_mx_takes_the_message(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer_for: Callable[..., Deliverer],
    mail_reply: str | None,
    rcpt_reply: str | None,
) -> None:
    bad = await start_mx(MX1, "127.0.3.2", mail_reply=mail_reply, rcpt_reply=rcpt_reply)
    good = await start_mx(MX2, "127.0.3.3", port=bad.port)
    mx_records(lab_dns, (10, MX1), (20, MX2))
    deliverer = deliverer_for(make_config(bad.port))
    with capture_logs() as logs:
        outcome = await deliverer.deliver(request())
    await deliverer.close()
    [rcpt] = outcome.delivered
    assert rcpt.mx_host == MX2
    assert bad.messages == []
    assert len(good.messages) == 1
    [first, _second] = [e for e in logs if e["event"] == "delivery.attempt"]
    assert first["mx_host"] == MX1
    assert "protocol error" in first["reason"]
    assert first["log_level"] == "warning"


async def test_garbage_reply_on_the_last_mx_defers(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: Callable[..., Deliverer]
) -> None:
    bad = await start_mx(MX1, "127.0.3.4", rcpt_reply="2_0 ok")
    mx_records(lab_dns, (10, MX1))
    outcome = await deliverer_for(make_config(bad.port)).deliver(request())
    [rcpt] = outcome.deferred
    assert "protocol error" in rcpt.reason
    assert not outcome.unreachable  # it answered, badly


# --- MX hosts that drop the connection ------------------------------------------------------


async def test_mx_dropping_before_the_final_dot_next_mx_takes_the_message(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: Callable[..., Deliverer]
) -> None:
    dropping = await start_mx(MX1, "127.0.3.5", drop="rcpt")
    good = await start_mx(MX2, "127.0.3.6", port=dropping.port)
    mx_records(lab_dns, (10, MX1), (20, MX2))
    deliverer = deliverer_for(make_config(dropping.port))
    outcome = await deliverer.deliver(request())
    await deliverer.close()
    [rcpt] = outcome.delivered
    assert rcpt.mx_host == MX2
    assert dropping.messages == []
    assert len(good.messages) == 1


async def test_mx_dropping_after_the_final_dot_defers_and_no_other_mx_gets_a_copy(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: Callable[..., Deliverer]
) -> None:
    dropping = await start_mx(MX1, "127.0.3.7", drop="data")
    backup = await start_mx(MX2, "127.0.3.8", port=dropping.port)
    mx_records(lab_dns, (10, MX1), (20, MX2))
    deliverer = deliverer_for(make_config(dropping.port))
    outcome = await deliverer.deliver(two_rcpts())  # must not raise
    await deliverer.close()
    assert [r.status for r in outcome.rcpts] == [RcptStatus.DEFERRED] * 2
    assert "may have arrived" in outcome.rcpts[0].reason
    assert len(dropping.messages) == 1  # it got the message and dropped before the reply
    assert backup.messages == []  # RFC 5321 6.1: no second copy in the same attempt
    assert backup.connections == 0


async def test_mx_silent_after_the_final_dot_times_out_and_defers_without_a_second_copy(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: Callable[..., Deliverer]
) -> None:
    silent = await start_mx(MX1, "127.0.3.22", drop="stall")
    backup = await start_mx(MX2, "127.0.3.23", port=silent.port)
    mx_records(lab_dns, (10, MX1), (20, MX2))
    config = make_config(silent.port)
    config = replace(config, delivery=replace(config.delivery, command_timeout=1))
    deliverer = deliverer_for(config)
    outcome = await deliverer.deliver(request())  # must not raise
    await deliverer.close()
    [rcpt] = outcome.deferred
    assert "may have arrived" in rcpt.reason
    assert len(silent.messages) == 1
    assert backup.connections == 0


async def test_no_mx_answering_at_all_is_unreachable(
    lab_dns: LabDns, deliverer_for: Callable[..., Deliverer]
) -> None:
    mx_records(lab_dns, (10, MX1), (20, MX2))
    lab_dns.add(MX1, "A", "127.0.3.9")
    lab_dns.add(MX2, "A", "127.0.3.10")
    outcome = await deliverer_for(make_config(9)).deliver(request())  # nothing listens on 9
    assert outcome.deferred
    assert outcome.unreachable


# --- limits and loops -----------------------------------------------------------------------


async def test_max_mx_addresses_caps_connection_attempts_per_attempt(
    lab_dns: LabDns, deliverer_for: Callable[..., Deliverer]
) -> None:
    mx_records(lab_dns, (10, MX1))
    for n in range(60):
        lab_dns.add(MX1, "A", f"127.0.4.{n + 1}")
    config = make_config(9)  # nothing listens: every address refuses
    with capture_logs() as logs:
        outcome = await deliverer_for(config).deliver(request())
    tried = [e["mx_ip"] for e in logs if e["event"] == "delivery.connect_failed"]
    assert len(tried) == config.delivery.max_mx_addresses == 5
    assert outcome.deferred
    assert outcome.unreachable
    assert any(e["event"] == "delivery.mx_address_limit" for e in logs)


async def test_max_mx_addresses_counts_over_all_mx_hosts(
    lab_dns: LabDns, deliverer_for: Callable[..., Deliverer]
) -> None:
    mx_records(lab_dns, (10, MX1), (20, MX2))
    for n in range(3):
        lab_dns.add(MX1, "A", f"127.0.4.{n + 1}")
        lab_dns.add(MX2, "A", f"127.0.4.{n + 11}")
    config = make_config(9)
    config = replace(config, delivery=replace(config.delivery, max_mx_addresses=4))
    with capture_logs() as logs:
        await deliverer_for(config).deliver(request())
    tried = [(e["mx_host"], e["mx_ip"]) for e in logs if e["event"] == "delivery.connect_failed"]
    assert len(tried) == 4
    assert [host for host, _ in tried] == [MX1, MX1, MX1, MX2]


@pytest.mark.parametrize("listen_host", ["same", "0.0.0.0"])
async def test_mx_that_is_the_relay_itself_bounces_5_4_6_without_connecting(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: Callable[..., Deliverer], listen_host: str
) -> None:
    # A lab MX stands where the relay listens: any connection to it would be the loop.
    myself = await start_mx(MX1, "127.0.3.11")
    mx_records(lab_dns, (10, MX1))
    host = "127.0.3.11" if listen_host == "same" else listen_host
    config = make_config(myself.port)
    config = replace(
        config, relay=RelayConfig(hostname="relay.test", listen=f"{host}:{myself.port}")
    )
    with capture_logs() as logs:
        outcome = await deliverer_for(config).deliver(two_rcpts())
    assert [r.status for r in outcome.rcpts] == [RcptStatus.BOUNCED] * 2
    assert "5.4.6" in outcome.rcpts[0].reason
    assert "loops back to myself" in outcome.rcpts[0].reason
    assert myself.connections == 0
    [line] = [e for e in logs if e["event"] == "delivery.outcome"]
    assert line["log_level"] == "error"


async def test_relay_as_an_mx_drops_its_record_and_every_less_preferred_one(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: Callable[..., Deliverer]
) -> None:
    """RFC 5321 5.1: only MX hosts more preferred than the relay are tried; when they fail, the
    message waits (it does not go to the relay itself nor to the less preferred backup)."""
    better = await start_mx(MX1, "127.0.3.12", drop="rcpt")
    myself = await start_mx(MX2, "127.0.3.13", port=better.port)
    worse = await start_mx("mx3.example.org", "127.0.3.14", port=better.port)
    mx_records(lab_dns, (5, MX1), (10, MX2), (20, "mx3.example.org"))
    config = make_config(better.port)
    config = replace(
        config, relay=RelayConfig(hostname="relay.test", listen=f"127.0.3.13:{better.port}")
    )
    deliverer = deliverer_for(config)
    outcome = await deliverer.deliver(request())
    await deliverer.close()
    assert outcome.deferred
    assert better.connections == 1
    assert myself.connections == worse.connections == 0

    # The same relay address on another port is not the relay: no loop there.
    config = replace(config, relay=replace(config.relay, listen=f"0.0.0.0:{better.port + 1}"))
    better.drop = None
    deliverer = deliverer_for(config)
    assert (await deliverer.deliver(request(2))).delivered
    await deliverer.close()


# --- what each attempt reports ----------------------------------------------------------------


@pytest.mark.parametrize("cert", [CertKind.EXPIRED, CertKind.NONE])
async def test_sending_mta_ip_is_in_reports_of_sessions_we_refused(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer_for: Callable[..., Deliverer],
    sink: MemorySink,
    cert: CertKind,
) -> None:
    mx = await start_mx(MX1, "127.0.3.16", cert=cert)
    mx_records(lab_dns, (10, MX1))
    outcome = await deliverer_for(make_config(mx.port), sts(Mode.ENFORCE, MX1)).deliver(request())
    assert outcome.deferred
    [result] = sink.results
    assert result.result_type is not None
    assert result.sending_mta_ip == "127.0.0.1"
    assert result.receiving_ip == "127.0.3.16"


async def test_sending_mta_ip_is_in_reports_of_remembered_tls_downgrades(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer_for: Callable[..., Deliverer],
    sink: MemorySink,
    history: ThreadRecordingHistory,
) -> None:
    history.record(MX1, offered_starttls=True, valid_cert=True, now=time.time())
    mx = await start_mx(MX1, "127.0.3.17", cert=CertKind.NONE)
    mx_records(lab_dns, (10, MX1))
    outcome = await deliverer_for(make_config(mx.port)).deliver(request())
    [rcpt] = outcome.deferred
    assert "downgrade" in rcpt.reason
    [result] = sink.results
    assert result.result_type == "starttls-not-supported"
    assert result.sending_mta_ip == "127.0.0.1"


async def test_remembered_tls_store_is_never_called_on_the_event_loop(
    start_mx: StartMx,
    lab_dns: LabDns,
    deliverer_for: Callable[..., Deliverer],
    history: ThreadRecordingHistory,
) -> None:
    mx = await start_mx(MX1, "127.0.3.18")
    mx_records(lab_dns, (10, MX1))
    deliverer = deliverer_for(make_config(mx.port))
    assert (await deliverer.deliver(request())).delivered
    await deliverer.close()
    loop_thread = threading.current_thread()
    assert len(history.threads) >= 2  # looked up and recorded
    assert loop_thread not in history.threads


async def test_log_levels_and_recipient_names(
    start_mx: StartMx, lab_dns: LabDns, deliverer_for: Callable[..., Deliverer]
) -> None:
    good = await start_mx(MX1, "127.0.3.19")
    expired = await start_mx(MX2, "127.0.3.20", cert=CertKind.EXPIRED, port=good.port)
    mx_records(lab_dns, (10, MX1))
    lab_dns.add("example.net", "MX", f"10 {MX2}.")
    deliverer = deliverer_for(make_config(good.port))
    with capture_logs() as logs:
        await deliverer.deliver(two_rcpts())
    await deliverer.close()
    [attempt] = [e for e in logs if e["event"] == "delivery.attempt"]
    assert attempt["log_level"] == "info"  # clean TLS delivery
    assert attempt["rcpts"] == [f"bob@{DOMAIN}", f"carol@{DOMAIN}"]
    [done] = [e for e in logs if e["event"] == "delivery.outcome"]
    assert done["log_level"] == "info"
    assert done["delivered"] == [f"bob@{DOMAIN}", f"carol@{DOMAIN}"]

    # No policy, expired certificate: delivered over TLS anyway, but the finding is a warning.
    deliverer = deliverer_for(make_config(good.port))
    with capture_logs() as logs:
        outcome = await deliverer.deliver(request(2, rcpt="dave@example.net"))
    await deliverer.close()
    assert outcome.delivered
    assert expired.messages
    [attempt] = [e for e in logs if e["event"] == "delivery.attempt"]
    assert attempt["log_level"] == "warning"
    assert attempt["findings"]


async def test_deferral_is_a_warning_naming_hashed_recipients(
    lab_dns: LabDns, deliverer_for: Callable[..., Deliverer]
) -> None:
    mx_records(lab_dns, (10, MX1))
    lab_dns.add(MX1, "A", "127.0.3.21")
    config = make_config(9)
    config = replace(config, relay=replace(config.relay, log_recipients="hash"))
    with capture_logs() as logs:
        await deliverer_for(config).deliver(request())
    [failed] = [e for e in logs if e["event"] == "delivery.connect_failed"]
    [done] = [e for e in logs if e["event"] == "delivery.outcome"]
    assert failed["log_level"] == done["log_level"] == "warning"
    [hashed] = done["deferred"]
    assert len(hashed) == 16
    assert f"bob@{DOMAIN}" not in str(done)
    assert failed["rcpts"] == done["deferred"]  # every line names them the same way

    config = replace(config, relay=replace(config.relay, log_recipients=False))
    with capture_logs() as logs:
        await deliverer_for(config).deliver(request())
    [done] = [e for e in logs if e["event"] == "delivery.outcome"]
    assert done["deferred"] == 1  # only how many
    assert f"bob@{DOMAIN}" not in str(logs)
