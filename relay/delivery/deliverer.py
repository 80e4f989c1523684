"""Outbound delivery of one message to one recipient domain: the aiosmtplib sequence.

    deliverer = Deliverer(config, resolver=..., policy_service=..., history_store=...,
                          sink=..., ssl_context=client_context(config.tls.ca_file))
    outcome = await deliverer.deliver(DeliveryRequest(queue_id, mail_from, rcpts, data))

For each MX host in preference order (STS-13): connect in plaintext, read the banner, EHLO, judge
what the peer offered, send STARTTLS ourselves (never aiosmtplib's silent "upgrade if offered"),
check that nothing follows the 220 (TLS-04), handshake with SNI = the MX host and a verifying
context (STS-10), EHLO again (TLS-03), and ask `relay.decision` at every step what to do. When a
certificate fails and the policy allows delivery anyway, a second connection is made with an
unverified context; the failure seen first is what gets reported.

Every attempt of a message on an MX (a new or a reused session) emits exactly one `SessionResult`
(unless the message is a TLS-RPT report itself: RPT-10), and one log line with the TLS facts, the
policy mode, the outcome and findings. An MX skipped before connecting (STS-11) or not reachable
at all emits none: no TLS session happened.
Idle sessions are kept for `idle_timeout` seconds and reused (RSET) for the next message to the
same MX; `delivery.concurrency_per_destination` bounds the sessions per MX host.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

import aiosmtplib
import dns.asyncresolver
import structlog

from detect.ehlo import judge_banner, judge_ehlo
from detect.history import HostHistory, TlsHistoryStore, judge_downgrade
from detect.model import Finding, FindingKind
from detect.starttls import judge_pre_handshake_bytes, judge_starttls_reply
from detect.tls import judge_tls_failure
from mtasts.errors import PolicyError
from mtasts.fetch import lookup_sts_record
from mtasts.model import PolicyResult
from relay.config import Config
from relay.decision import (
    Action,
    Decision,
    EffectivePolicy,
    Observation,
    decide,
    decide_expiry,
    decide_reply,
    effective_policy,
    may_retry_unverified,
    mx_matches,
    screen_mx,
    wants_starttls,
)
from relay.delivery.mx import MxHost, MxResult, MxStatus, lookup_mx
from relay.delivery.starttls import buffered_after_reply, mx_client, upgrade_to_tls
from relay.errors import SessionError
from relay.metrics import Metrics
from relay.tls import unverified_context
from tlsrpt_emit.model import PolicyType, ResultSink, ResultType, SessionResult

log = structlog.get_logger(__name__)

_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r")


class PolicyLookup(Protocol):
    """What the deliverer needs of `mtasts.service.PolicyService`."""

    async def get(self, domain: str) -> PolicyResult: ...


@dataclass(frozen=True, slots=True)
class DeliveryRequest:
    """One message for recipients of one domain. `no_tlsrpt` marks a TLS-RPT report (RPT-10)."""

    queue_id: str
    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes
    tls_required_no: bool = False
    no_tlsrpt: bool = False
    smtputf8: bool = False
    eight_bit: bool = False

    @property
    def domain(self) -> str:
        return self.rcpts[0].rpartition("@")[2].lower().rstrip(".")


class RcptStatus(StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class RcptOutcome:
    """What became of one recipient. `result_type` is the TLS-RPT result type of a TLS failure."""

    rcpt: str
    status: RcptStatus
    reason: str = ""
    result_type: str | None = None
    mx_host: str = ""
    tls: bool = False


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """Per recipient: delivered, deferred or bounced. `policy_id` is the `_mta-sts` record id of
    the MTA-STS policy applied, which the queue keeps for the STS-12 check at expiry."""

    queue_id: str
    rcpts: tuple[RcptOutcome, ...]
    policy_id: str | None = None

    @property
    def tls_failure(self) -> bool:
        """True when a deferral was a TLS failure (it has a TLS-RPT result type)."""
        return any(r.result_type for r in self.deferred)

    def _with(self, status: RcptStatus) -> tuple[RcptOutcome, ...]:
        return tuple(r for r in self.rcpts if r.status is status)

    @property
    def delivered(self) -> tuple[RcptOutcome, ...]:
        return self._with(RcptStatus.DELIVERED)

    @property
    def deferred(self) -> tuple[RcptOutcome, ...]:
        return self._with(RcptStatus.DEFERRED)

    @property
    def bounced(self) -> tuple[RcptOutcome, ...]:
        return self._with(RcptStatus.BOUNCED)


def normalize_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF, ending with one (TLS-06: no bare LF or CR reaches the MX)."""
    pairs = data.count(b"\r\n")
    if not data.count(b"\r") == pairs == data.count(b"\n"):  # intake refused bare ones already
        data = _LINE_ENDINGS.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


@dataclass(eq=False, slots=True)
class _Session:
    """An established SMTP session, ready for MAIL FROM, and what was learned setting it up."""

    client: aiosmtplib.SMTP
    decision: Decision
    obs: Observation
    findings: tuple[Finding, ...]
    helo_name: str
    tls: bool
    tls_version: str | None = None
    cipher: str | None = None
    sending_ip: str = ""
    idle_since: float = 0.0


@dataclass(slots=True)
class _Attempt:
    """What one session attempt on one MX gave (before the message was sent, if at all)."""

    decision: Decision
    obs: Observation = field(default_factory=Observation)
    findings: tuple[Finding, ...] = ()
    helo_name: str = ""
    session: _Session | None = None
    reused: bool = False  # a parked session: its EHLO and TLS were recorded when it was opened


class Deliverer:
    """Delivers queued messages to recipient MX hosts under each domain's TLS policy."""

    def __init__(
        self,
        config: Config,
        *,
        resolver: dns.asyncresolver.Resolver,
        policy_service: PolicyLookup,
        history_store: TlsHistoryStore,
        sink: ResultSink,
        ssl_context: ssl.SSLContext,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        idle_timeout: float = 5.0,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.policy_service = policy_service
        self.history = history_store
        self.sink = sink
        self.ssl_context = ssl_context
        self.clock = clock
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.idle_timeout = idle_timeout
        self._unverified = unverified_context()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._idle: dict[tuple[str, str, EffectivePolicy], list[_Session]] = {}

    # --- the message ----------------------------------------------------------------------

    async def deliver(self, request: DeliveryRequest) -> DeliveryOutcome:
        """Try each MX of the recipient domain until one takes the message or none is left."""
        domain = request.domain
        await self.prune_idle()
        with structlog.contextvars.bound_contextvars(
            queue_id=request.queue_id, recipient_domain=domain
        ):
            mx = await lookup_mx(domain, self.resolver, rng=self.rng)
            if mx.status is not MxStatus.OK:
                return self._finish(request, self._dns_outcome(request, mx))
            policy, policy_id = await self._policy(request, mx)
            outcome = await self._try_hosts(request, mx, policy, policy_id)
            return self._finish(request, outcome)

    async def expiry_decision(
        self, domain: str, *, tls_failure: bool, failed_policy_id: str | None
    ) -> Decision:
        """STS-12: before bouncing a message past queue_lifetime, look at the `_mta-sts` TXT id
        again; a new id means one more try with the new policy (`Action.DEFER`)."""
        live_id: str | None = None
        if tls_failure:
            try:
                record = await lookup_sts_record(domain, self.resolver)
            except PolicyError as exc:
                log.info("delivery.expiry_txt_lookup_failed", domain=domain, error=str(exc))
                record = None
            live_id = record.id if record is not None else None
        return decide_expiry(
            tls_failure=tls_failure, failed_policy_id=failed_policy_id, live_policy_id=live_id
        )

    def _dns_outcome(self, request: DeliveryRequest, mx: MxResult) -> DeliveryOutcome:
        status = RcptStatus.BOUNCED if mx.permanent else RcptStatus.DEFERRED
        log.info("delivery.mx_lookup", status=str(mx.status), reason=mx.reason)
        return _all(request, status, mx.reason)

    async def _policy(
        self, request: DeliveryRequest, mx: MxResult
    ) -> tuple[EffectivePolicy, str | None]:
        """The effective TLS policy and the `_mta-sts` record id it came with (for STS-12)."""
        domain_tls = self.config.domain_tls(request.domain)
        result: PolicyResult | None = None
        if not mx.literal and domain_tls == "mta-sts":
            # STS-08: an address literal has no policy; a local override needs no look-up.
            result = await self.policy_service.get(request.domain)
            if result.failure is not None and not request.no_tlsrpt:
                self._emit_policy_failure(request, result)
        policy = effective_policy(
            result,
            domain_tls=domain_tls,
            no_policy_tls=self.config.delivery.no_policy_tls,
            # RPT-10: MTA-STS is not applied to report mail, like `TLS-Required: No`.
            tls_required_no=request.tls_required_no or request.no_tlsrpt,
            on_downgrade=self.config.detect.on_downgrade,
        )
        record = result.record if result is not None and policy.is_sts else None
        return policy, record.id if record is not None else None

    async def _try_hosts(
        self, request: DeliveryRequest, mx: MxResult, policy: EffectivePolicy, policy_id: str | None
    ) -> DeliveryOutcome:
        last: RcptOutcome | None = None
        hosts = mx.hosts
        for index, host in enumerate(hosts):
            last_mx = index == len(hosts) - 1
            skip = screen_mx(policy, host.name)
            if skip is not None:
                log.warning("delivery.mx_skipped", mx_host=host.name, reason=skip.reason)
                last = RcptOutcome("", RcptStatus.DEFERRED, skip.reason, None, host.name)
                continue
            if not host.addresses:
                log.info("delivery.mx_no_address", mx_host=host.name)
                last = RcptOutcome("", RcptStatus.DEFERRED, f"{host.name} has no address")
                continue
            outcome = await self._try_host(request, host, policy, last_mx=last_mx)
            if isinstance(outcome, DeliveryOutcome):
                return replace(outcome, policy_id=policy_id)
            if last is None or outcome.result_type or not last.result_type:
                last = outcome  # the TLS failure, if any, is what the sender should read
        if last is None:
            return _all(request, RcptStatus.DEFERRED, "no MX host to try")
        return DeliveryOutcome(
            request.queue_id,
            tuple(replace(last, rcpt=r, status=RcptStatus.DEFERRED) for r in request.rcpts),
            policy_id,
        )

    async def _try_host(
        self, request: DeliveryRequest, host: MxHost, policy: EffectivePolicy, *, last_mx: bool
    ) -> DeliveryOutcome | RcptOutcome:
        """A delivered/bounced outcome, or why this host did not take the message."""
        slot = self._slots.setdefault(
            host.name, asyncio.Semaphore(self.config.delivery.concurrency_per_destination)
        )
        failure = RcptOutcome("", RcptStatus.DEFERRED, "no address answered", None, host.name)
        async with slot:
            for ip in host.addresses:
                with structlog.contextvars.bound_contextvars(mx_host=host.name, mx_ip=ip):
                    try:
                        attempt = await self._attempt(request, host, ip, policy, last_mx=last_mx)
                    except SessionError as exc:
                        log.info(
                            "delivery.connect_failed",
                            error=str(exc),
                            findings=[f.as_log() for f in exc.findings],
                        )
                        failure = replace(failure, reason=str(exc))
                        continue
                    return await self._conclude(request, host, ip, policy, attempt)
        return failure

    async def _conclude(
        self,
        request: DeliveryRequest,
        host: MxHost,
        ip: str,
        policy: EffectivePolicy,
        attempt: _Attempt,
    ) -> DeliveryOutcome | RcptOutcome:
        """Send the message if the attempt allows it; report and log the session."""
        session = attempt.session
        decision = attempt.decision
        outcome: DeliveryOutcome | RcptOutcome
        if session is None:
            outcome = RcptOutcome(
                "", RcptStatus.DEFERRED, decision.reason, decision.result_type, host.name
            )
        else:
            try:
                outcome = await self._send(request, session, host.name)
            except SessionError as exc:
                outcome = RcptOutcome("", RcptStatus.DEFERRED, str(exc), None, host.name)
                await _close(session.client)
            else:
                self._park(host.name, ip, policy, session)
        if not attempt.reused:
            self._record_history(host.name, attempt.obs)
        if not request.no_tlsrpt and not _is_literal(request.domain):
            self._emit_session(request, host, ip, policy, attempt)
        self._log_attempt(policy, attempt, outcome)
        return outcome

    # --- sessions -------------------------------------------------------------------------

    async def _attempt(
        self,
        request: DeliveryRequest,
        host: MxHost,
        ip: str,
        policy: EffectivePolicy,
        *,
        last_mx: bool,
    ) -> _Attempt:
        """A session ready for the message (reused or new), or the decision why there is none."""
        reused = await self._reuse(host.name, ip, policy)
        if reused is not None:
            return _Attempt(
                reused.decision, reused.obs, reused.findings, reused.helo_name, reused, reused=True
            )
        obs = Observation(mx_matches=mx_matches(policy, host.name))
        attempt = await self._establish(host, ip, policy, obs, (), "verify", last_mx=last_mx)
        # At most two more connections: unverified TLS after a certificate failure, plaintext
        # after a failed STARTTLS attempt, each only when the decision allows it.
        for _ in range(2):
            if attempt.session is not None or not attempt.decision.delivers:
                break
            plan = "unverified" if attempt.decision.action is Action.DELIVER_TLS else "plain"
            try:
                attempt = await self._establish(
                    host, ip, policy, attempt.obs, attempt.findings, plan, last_mx=last_mx
                )
            except SessionError as exc:
                # The TLS failure already seen is still the session's result for TLS-RPT.
                action = Action.DEFER if last_mx else Action.NEXT_MX
                reason = f"{attempt.decision.reason}; {plan} retry failed: {exc}"
                attempt.decision = replace(attempt.decision, action=action, reason=reason)
                break
        return attempt

    async def _establish(
        self,
        host: MxHost,
        ip: str,
        policy: EffectivePolicy,
        obs: Observation,
        findings: tuple[Finding, ...],
        plan: str,
        *,
        last_mx: bool,
    ) -> _Attempt:
        """One TCP connection: banner, EHLO, STARTTLS unless `plan` is "plain", EHLO again.

        `plan` is "verify" (verifying context), "unverified" (after a certificate failure) or
        "plain" (no STARTTLS, after a failed attempt that the policy lets go on in plaintext).
        """
        client = mx_client(self.config, ip)
        try:
            try:
                banner = await client.connect(timeout=self.config.delivery.connect_timeout)
            except aiosmtplib.SMTPConnectResponseError as exc:
                judged = judge_banner(exc.code, exc.message)
                raise SessionError(f"banner {exc.code} {exc.message}", judged) from exc
            findings += judge_banner(banner.code, banner.message)
            return await self._negotiate(client, host, policy, obs, findings, plan, last_mx=last_mx)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await _close(client)
            raise SessionError(f"{type(exc).__name__}: {exc}") from exc

    async def _negotiate(
        self,
        client: aiosmtplib.SMTP,
        host: MxHost,
        policy: EffectivePolicy,
        obs: Observation,
        findings: tuple[Finding, ...],
        plan: str,
        *,
        last_mx: bool,
    ) -> _Attempt:
        history = self.history.get(host.name)
        expect = policy.strict or policy.is_sts or self._offered_before(history)
        ehlo = await client.execute_command(b"EHLO", self.config.relay.hostname.encode("ascii"))
        lines = ehlo.message.split("\n")
        judgement = judge_ehlo(ehlo.code, lines, expect_starttls=expect and plan != "plain")
        helo_name = judgement.server_name
        findings += tuple(f for f in judgement.findings if f not in findings)
        if ehlo.code == 250:
            client.last_ehlo_response = ehlo  # aiosmtplib parses the extensions from it
            obs = replace(obs, ehlo_ok=True, offered_starttls=judgement.offers_starttls)
        else:
            obs = replace(obs, ehlo_ok=False, offered_starttls=False)

        def conclude(obs: Observation, found: tuple[Finding, ...]) -> _Attempt:
            found = self._with_downgrade(host.name, obs, found)
            return _Attempt(decide(policy, obs, found, last_mx=last_mx), obs, found, helo_name)

        if not obs.ehlo_ok or plan == "plain" or not wants_starttls(policy, obs):
            attempt = conclude(obs, findings)
            if attempt.decision.action is not Action.DELIVER_PLAINTEXT:
                await _close(client)
                return attempt
            if not obs.ehlo_ok:
                # HELO only when the decision allowed plaintext (never under enforce: TLS-07).
                await client.helo()
            attempt.session = _Session(
                client, attempt.decision, obs, attempt.findings, helo_name, tls=False
            )
            return attempt

        # STARTTLS, sent by us so the receive buffer can be checked before the handshake.
        reply = await client.execute_command(b"STARTTLS")
        reply_finding = judge_starttls_reply(reply.code, reply.message)
        if reply_finding is not None:
            findings += (reply_finding,)
        if reply.code != 220:
            obs = replace(obs, starttls_ok=False)
            attempt = conclude(obs, findings)
            if attempt.decision.action is Action.DELIVER_PLAINTEXT:
                # RFC 3207: after a refused STARTTLS the plaintext session goes on.
                attempt.session = _Session(
                    client, attempt.decision, obs, attempt.findings, helo_name, tls=False
                )
            else:
                await _close(client)
            return attempt
        injected = buffered_after_reply(client)
        injection = judge_pre_handshake_bytes(injected) if injected else None
        if injection is not None:
            # TLS-04: plaintext after the 220 was injected on the path; abort this attempt.
            await _close(client)
            return conclude(replace(obs, starttls_ok=False), (*findings, injection))
        obs = replace(obs, starttls_ok=True)

        context = self.ssl_context if plan == "verify" else self._unverified
        try:
            await upgrade_to_tls(
                client, context, host.name, handshake_timeout=self.config.delivery.command_timeout
            )
        except ssl.SSLCertVerificationError as exc:
            await _close(client)
            tls_finding = judge_tls_failure(exc.verify_code, exc.verify_message or str(exc))
            obs = replace(
                obs,
                handshake_ok=False,
                cert_valid=False,
                tls_result_type=tls_finding.result_type,
                reason_code=tls_finding.reason_code,
            )
            findings += (tls_finding,)
            attempt = conclude(obs, findings)
            if may_retry_unverified(policy):
                retry = conclude(replace(obs, handshake_ok=True), findings)
                if retry.decision.action is Action.DELIVER_TLS:
                    # Let the caller connect again without verification; report what was seen.
                    return _Attempt(retry.decision, obs, retry.findings, helo_name)
            return attempt
        except (ssl.SSLError, ConnectionError, TimeoutError, aiosmtplib.SMTPException) as exc:
            await _close(client)
            tls_finding = judge_tls_failure(None, str(exc))
            obs = replace(
                obs,
                handshake_ok=False,
                tls_result_type=tls_finding.result_type,
                reason_code=tls_finding.reason_code,
            )
            return conclude(obs, (*findings, tls_finding))
        verified = plan == "verify"
        obs = replace(obs, handshake_ok=True, cert_valid=True if verified else obs.cert_valid)
        # TLS-03: forget what was learned before the handshake and say EHLO again.
        again = await client.execute_command(b"EHLO", self.config.relay.hostname.encode("ascii"))
        if again.code != 250:
            await _close(client)
            raise SessionError(f"EHLO after STARTTLS refused: {again.code} {again.message}")
        client.last_ehlo_response = again
        helo_name = again.message.split("\n", 1)[0].split(" ", 1)[0]
        attempt = conclude(obs, findings)
        attempt.helo_name = helo_name
        if attempt.decision.action is not Action.DELIVER_TLS:
            await _close(client)
            return attempt
        ssl_object = client.get_transport_info("ssl_object")
        cipher = ssl_object.cipher() if isinstance(ssl_object, ssl.SSLObject) else None
        attempt.session = _Session(
            client,
            attempt.decision,
            obs,
            attempt.findings,
            helo_name,
            tls=True,
            tls_version=ssl_object.version() if isinstance(ssl_object, ssl.SSLObject) else None,
            cipher=cipher[0] if cipher else None,
        )
        return attempt

    def _offered_before(self, history: HostHistory | None) -> bool:
        """True when the host offered STARTTLS within `detect.history_days` (remembered TLS)."""
        if history is None or history.last_starttls_at is None:
            return False
        return self.clock() - history.last_starttls_at <= self.config.detect.history_days * 86400

    def _with_downgrade(
        self, host: str, obs: Observation, findings: tuple[Finding, ...]
    ) -> tuple[Finding, ...]:
        """Add the downgrade finding when this host did better within `history_days`."""
        if any(f.kind is FindingKind.DOWNGRADE for f in findings):
            return findings
        if obs.handshake_ok and obs.cert_valid:
            return findings
        finding = judge_downgrade(
            self.history.get(host),
            # A refused STARTTLS or injected bytes leave no more TLS than a stripped keyword.
            offered_starttls=obs.offered_starttls and obs.starttls_ok is not False,
            cert_valid=obs.cert_valid,
            now=self.clock(),
            history_days=self.config.detect.history_days,
        )
        return (*findings, finding) if finding is not None else findings

    # --- sending and reuse ----------------------------------------------------------------

    async def _send(
        self, request: DeliveryRequest, session: _Session, mx_host: str
    ) -> DeliveryOutcome | RcptOutcome:
        """MAIL, RCPT, DATA on an established session; SMTP replies decide per recipient."""
        client = session.client
        options: list[str] = []
        if request.smtputf8:
            if not client.supports_extension("smtputf8"):
                # RFC 6531 3.2: an SMTPUTF8 message must not go to a server without SMTPUTF8.
                reason = "554 5.6.7 the next hop does not support SMTPUTF8"
                return _all(request, RcptStatus.BOUNCED, reason, mx_host, session.tls)
            options.append("SMTPUTF8")
        encoding = "utf-8" if request.smtputf8 else "ascii"
        if request.eight_bit and client.supports_extension("8bitmime"):
            # Without 8BITMIME at the next hop the body goes as it is, as Postfix does by default.
            options.append("BODY=8BITMIME")
        try:
            try:
                await client.mail(request.mail_from, options=options, encoding=encoding)
            except aiosmtplib.SMTPResponseException as exc:
                verdict = decide_reply(exc.code, exc.message)
                await client.rset()
                return _all(request, _status(verdict), verdict.reason, mx_host, session.tls)
            results: dict[str, RcptOutcome] = {}
            accepted: list[str] = []
            for rcpt in request.rcpts:
                try:
                    await client.rcpt(rcpt, encoding=encoding)
                    accepted.append(rcpt)
                except aiosmtplib.SMTPResponseException as exc:
                    verdict = decide_reply(exc.code, exc.message)
                    results[rcpt] = RcptOutcome(
                        rcpt, _status(verdict), verdict.reason, None, mx_host, session.tls
                    )
            if accepted:
                try:
                    reply = await client.data(normalize_crlf(request.data))
                    status, reason = RcptStatus.DELIVERED, f"{reply.code} {reply.message}"
                except aiosmtplib.SMTPResponseException as exc:
                    verdict = decide_reply(exc.code, exc.message)
                    status, reason = _status(verdict), verdict.reason
                for rcpt in accepted:
                    results[rcpt] = RcptOutcome(rcpt, status, reason, None, mx_host, session.tls)
            else:
                await client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SessionError(f"session lost: {type(exc).__name__}: {exc}") from exc
        return DeliveryOutcome(request.queue_id, tuple(results[r] for r in request.rcpts))

    def _park(self, host: str, ip: str, policy: EffectivePolicy, session: _Session) -> None:
        """Keep a healthy session for the next message to this MX (connection reuse)."""
        if not session.client.is_connected:
            return
        session.idle_since = self.clock()
        self._idle.setdefault((host, ip, policy), []).append(session)

    async def _reuse(self, host: str, ip: str, policy: EffectivePolicy) -> _Session | None:
        idle = self._idle.get((host, ip, policy), [])
        while idle:
            session = idle.pop()
            fresh = self.clock() - session.idle_since <= self.idle_timeout
            if fresh and session.client.is_connected:
                try:
                    await session.client.rset()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    await _close(session.client)
                    continue
                return session
            await _quit(session.client)
        return None

    async def prune_idle(self) -> None:
        """QUIT idle sessions older than `idle_timeout` (called at every `deliver`)."""
        now = self.clock()
        stale: list[_Session] = []
        # Take the stale sessions out before the first await: deliveries running meanwhile
        # add and take sessions too, and must never be handed one being closed.
        for key, sessions in list(self._idle.items()):
            keep = [s for s in sessions if now - s.idle_since <= self.idle_timeout]
            stale += [s for s in sessions if s not in keep]
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        for session in stale:
            await _quit(session.client)

    async def close(self) -> None:
        """QUIT every idle session (at shutdown)."""
        idle, self._idle = self._idle, {}
        for sessions in idle.values():
            for session in sessions:
                await _quit(session.client)

    # --- reporting ------------------------------------------------------------------------

    def _record_history(self, host: str, obs: Observation) -> None:
        if obs.ehlo_ok:
            self.history.record(
                host,
                offered_starttls=obs.offered_starttls,
                valid_cert=obs.cert_valid is True,
                now=self.clock(),
            )

    def _emit_policy_failure(self, request: DeliveryRequest, result: PolicyResult) -> None:
        assert result.failure is not None
        policy = result.policy
        self.sink.record(
            SessionResult(
                policy_domain=request.domain,
                policy_type=PolicyType.STS if policy is not None else PolicyType.NO_POLICY_FOUND,
                policy_strings=policy.policy_strings if policy is not None else (),
                when=self.clock(),
                result_type=ResultType(result.failure.result_type),
                additional_information=result.failure.message,
            )
        )

    def _emit_session(
        self,
        request: DeliveryRequest,
        host: MxHost,
        ip: str,
        policy: EffectivePolicy,
        attempt: _Attempt,
    ) -> None:
        decision = attempt.decision
        is_sts = policy.is_sts and policy.policy is not None
        session = attempt.session
        self.sink.record(
            SessionResult(
                policy_domain=request.domain,
                policy_type=PolicyType.STS if is_sts else PolicyType.NO_POLICY_FOUND,
                policy_strings=policy.policy.policy_strings if policy.policy and is_sts else (),
                when=self.clock(),
                mx_host=host.name,
                receiving_ip=ip,
                sending_mta_ip=_sending_ip(session.client) if session is not None else "",
                receiving_mx_helo=attempt.helo_name,
                result_type=ResultType(decision.result_type) if decision.result_type else None,
                failure_reason_code=decision.reason_code if decision.result_type else "",
                additional_information=decision.reason if decision.result_type else "",
            )
        )

    def _log_attempt(
        self, policy: EffectivePolicy, attempt: _Attempt, outcome: DeliveryOutcome | RcptOutcome
    ) -> None:
        session = attempt.session
        if isinstance(outcome, DeliveryOutcome):
            result = ",".join(sorted({str(r.status) for r in outcome.rcpts}))
        else:
            result = str(outcome.status)
        if self.metrics is not None:
            for finding in attempt.findings:
                self.metrics.findings.labels(kind=str(finding.kind)).inc()
        log.info(
            "delivery.attempt",
            policy_mode=policy.mode,
            action=str(attempt.decision.action),
            result_type=attempt.decision.result_type,
            outcome=result,
            reason=attempt.decision.reason if session is None else _outcome_reason(outcome),
            tls_version=session.tls_version if session else None,
            cipher=session.cipher if session else None,
            mx_helo=attempt.helo_name,
            findings=[f.as_log() for f in attempt.findings],
        )

    def _finish(self, request: DeliveryRequest, outcome: DeliveryOutcome) -> DeliveryOutcome:
        # Bounces are counted where the DSN is made (the queue runner), with expiries.
        if self.metrics is not None:
            for rcpt in outcome.rcpts:
                if rcpt.status is RcptStatus.DELIVERED:
                    self.metrics.delivered.labels(tls="yes" if rcpt.tls else "no").inc()
                elif rcpt.status is RcptStatus.DEFERRED:
                    self.metrics.deferred.labels(reason=rcpt.result_type or "other").inc()
        return outcome


def _outcome_reason(outcome: DeliveryOutcome | RcptOutcome) -> str:
    if isinstance(outcome, RcptOutcome):
        return outcome.reason
    return "; ".join(sorted({r.reason for r in outcome.rcpts}))


def _all(
    request: DeliveryRequest, status: RcptStatus, reason: str, mx_host: str = "", tls: bool = False
) -> DeliveryOutcome:
    return DeliveryOutcome(
        request.queue_id,
        tuple(RcptOutcome(r, status, reason, None, mx_host, tls) for r in request.rcpts),
    )


def _status(verdict: Decision) -> RcptStatus:
    if verdict.action is Action.BOUNCE:
        return RcptStatus.BOUNCED
    if verdict.delivers:
        return RcptStatus.DELIVERED
    return RcptStatus.DEFERRED


def _is_literal(domain: str) -> bool:
    return domain.startswith("[")


def _sending_ip(client: aiosmtplib.SMTP) -> str:
    sockname = client.get_transport_info("sockname")
    return str(sockname[0]) if sockname else ""


async def _close(client: aiosmtplib.SMTP) -> None:
    client.close()


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await client.quit(timeout=1)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        pass
    finally:
        client.close()
