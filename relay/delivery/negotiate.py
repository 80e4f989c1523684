"""Setting up a session to one MX address under its plan, for delivery.

`Negotiator.attempt` drives an `MxConnection` (banner, EHLO, STARTTLS, handshake, EHLO again) and
asks `relay.decision` after each step what to do. When a certificate fails and the policy allows
delivery anyway, a second connection is made with an unverified context; after a failed STARTTLS
that the policy lets go on in plaintext, a plaintext one (`decision.next_connection`). The failure
seen first is what the attempt reports. Connections come from a session factory: `MxSession` on
the wire, a scripted fake in the table tests (`tests/relay/fake_mx.py`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from detect.dane import check_chain
from detect.history import HostHistory, TlsHistoryStore
from detect.model import Finding, FindingKind
from relay.config import Config
from relay.connection_plan import (
    Connection,
    hello_expects_starttls,
    may_retry_unverified,
    next_connection,
    retry_failed,
)
from relay.decision import (
    Action,
    Decision,
    Observation,
    decide,
    mx_matches,
    remembered_downgrade,
    wants_starttls,
)
from relay.delivery.dane_tls import dane_context
from relay.delivery.policy import MxPlan, remembering
from relay.delivery.session import MxConnection, MxSession, TlsStep
from relay.errors import SessionError
from relay.tls import unverified_context
from relay.tls_rules import EffectivePolicy, Requirement
from tlsrpt_emit.model import result_type_of


@dataclass(eq=False, slots=True)
class Established:
    """A session ready for MAIL FROM, and what was learned setting it up."""

    mx: MxConnection
    decision: Decision
    obs: Observation
    findings: tuple[Finding, ...]
    helo_name: str
    tls: bool
    tls_version: str | None = None
    cipher: str | None = None
    idle_since: float = 0.0


SessionFactory = Callable[[str, str], MxConnection]  # (address, MX host name) -> a connection


@dataclass(slots=True)
class Dial:
    """One connection to one MX address while it is negotiated: the plan, which connection of
    the attempt this is, and what was seen so far (one value instead of seven threaded ones)."""

    plan: MxPlan
    mx: MxConnection
    connection: Connection
    obs: Observation
    findings: tuple[Finding, ...] = ()
    helo_name: str = ""

    def see(self, **changes: object) -> None:
        self.obs = replace(self.obs, **changes)  # type: ignore[arg-type]


@dataclass(slots=True)
class Attempt:
    """What one session attempt on one MX gave (before the message was sent, if at all)."""

    decision: Decision
    obs: Observation = field(default_factory=Observation)
    findings: tuple[Finding, ...] = ()
    helo_name: str = ""
    session: Established | None = None
    reused: bool = False  # a pooled session: its EHLO and TLS were recorded when it was opened
    sending_ip: str = ""  # our end of the last connection made, "" when none connected

    @classmethod
    def reusing(cls, session: Established) -> Attempt:
        return cls(
            session.decision,
            session.obs,
            session.findings,
            session.helo_name,
            session,
            reused=True,
            sending_ip=session.mx.sending_ip,
        )


class Negotiator:
    """Opens sessions to MX addresses and decides, step by step, whether they may carry mail."""

    def __init__(
        self,
        config: Config,
        *,
        ssl_context: ssl.SSLContext,
        history: TlsHistoryStore,
        clock: Callable[[], float],
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.history = history
        self.clock = clock
        self.session_factory = session_factory or self._mx_session
        self._unverified = unverified_context()
        self._dane = dane_context()

    def _mx_session(self, ip: str, host: str) -> MxConnection:
        return MxSession(self.config, ip, host)

    async def attempt(self, plan: MxPlan, ip: str) -> Attempt:
        """A new session ready for the message, or the decision why there is none.
        Raises `SessionError` when the first connection could not be had or broke."""
        # The store may be SQLite or a shared one: never block the event loop on it.
        history = await asyncio.to_thread(self.history.get, plan.host)
        plan = remembering(plan, history, now=self.clock(), days=self.config.detect.history_days)
        obs = Observation(mx_matches=mx_matches(plan.policy, plan.host))
        attempt = await self._establish(plan, ip, obs, (), Connection.VERIFY)
        # At most two more connections: unverified TLS after a certificate failure, plaintext
        # after a failed STARTTLS attempt, each only when the decision allows it.
        for _ in range(2):
            connection = next_connection(attempt.decision)
            if attempt.session is not None or connection is None:
                break
            try:
                attempt = await self._establish(plan, ip, attempt.obs, attempt.findings, connection)
            except SessionError as exc:
                attempt.decision = retry_failed(
                    attempt.decision, connection, str(exc), last_mx=plan.last_mx
                )
                break
        return attempt

    async def _establish(
        self,
        plan: MxPlan,
        ip: str,
        obs: Observation,
        findings: tuple[Finding, ...],
        connection: Connection,
    ) -> Attempt:
        """One TCP connection: banner, EHLO, STARTTLS unless it is plain, EHLO again."""
        mx = self.session_factory(ip, plan.host)
        _banner, judged = await mx.open()
        dial = Dial(plan, mx, connection, obs, findings + judged)
        try:
            attempt = await self._negotiate(dial)
        except SessionError:
            mx.close()
            raise
        attempt.sending_ip = mx.sending_ip
        return attempt

    async def _negotiate(self, dial: Dial) -> Attempt:
        await self._hello(dial)
        policy = dial.plan.policy
        if not dial.obs.ehlo_ok or dial.connection is Connection.PLAIN:
            return await self._plaintext(dial, self._conclude(dial))
        if not wants_starttls(policy, dial.obs):
            return await self._plaintext(dial, self._conclude(dial))
        stopped = await self._starttls(dial)
        if stopped is not None:
            return stopped
        tls = await dial.mx.handshake(self._context(policy, dial.connection), sni=dial.plan.sni)
        if tls.finding is None and policy.requirement is Requirement.DANE:
            tls = self._dane_check(policy, tls)
            if tls.finding is not None:
                dial.mx.close()
        if tls.finding is not None:
            return self._tls_failed(dial, tls)
        return await self._over_tls(dial, tls)

    async def _hello(self, dial: Dial) -> None:
        expect = hello_expects_starttls(dial.plan.expect_starttls, dial.connection)
        hello = await dial.mx.hello(expect_starttls=expect)
        dial.helo_name = hello.judgement.server_name
        dial.findings += tuple(f for f in hello.judgement.findings if f not in dial.findings)
        dial.see(ehlo_ok=hello.ok, offered_starttls=hello.ok and hello.judgement.offers_starttls)

    async def _starttls(self, dial: Dial) -> Attempt | None:
        """STARTTLS, sent by us so the receive buffer can be checked before the handshake; the
        attempt when it goes no further, None when the handshake is next."""
        step = await dial.mx.starttls()
        if step.refusal is not None:
            dial.findings += (step.refusal,)
        if step.reply.code != 220:
            # RFC 3207: after a refused STARTTLS the plaintext session goes on.
            dial.see(starttls_ok=False)
            return await self._plaintext(dial, self._conclude(dial), helo=False)
        if step.injection is not None:
            # TLS-04: plaintext after the 220 was injected on the path; abort this attempt.
            dial.mx.close()
            dial.see(starttls_ok=False)
            dial.findings += (step.injection,)
            return self._conclude(dial)
        dial.see(starttls_ok=True)
        return None

    def _tls_failed(self, dial: Dial, tls: TlsStep) -> Attempt:
        """The handshake or the certificate failed (the connection is closed)."""
        assert tls.finding is not None
        dial.see(
            handshake_ok=False,
            cert_valid=False if tls.cert_failure else dial.obs.cert_valid,
            tls_result_type=result_type_of(tls.finding.result_type),
            reason_code=tls.finding.reason_code,
        )
        dial.findings += (tls.finding,)
        if tls.cert_failure and may_retry_unverified(dial.plan.policy):
            retry = self._conclude(dial, replace(dial.obs, handshake_ok=True))
            if retry.decision.action is Action.DELIVER_TLS:
                # Let the caller connect again without verification; report what was seen.
                return Attempt(retry.decision, dial.obs, retry.findings, dial.helo_name)
        return self._conclude(dial)

    async def _over_tls(self, dial: Dial, tls: TlsStep) -> Attempt:
        """After the handshake: EHLO again (TLS-03) and the session, if the decision allows."""
        policy = dial.plan.policy
        # Under DANE with no usable record the session is encrypted, not authenticated.
        verified = (
            dial.connection is Connection.VERIFY
            and policy.requirement is not Requirement.DANE_UNUSABLE
        )
        dial.see(handshake_ok=True, cert_valid=True if verified else dial.obs.cert_valid)
        # TLS-03: forget what was learned before the handshake and say EHLO again.
        again = await dial.mx.hello_again()
        if not again.ok:
            dial.mx.close()
            raise SessionError(f"EHLO after STARTTLS refused: {again.code} {again.text}")
        dial.helo_name = again.judgement.server_name
        dial.see(offered_requiretls=dial.mx.supports("requiretls"))
        attempt = self._conclude(dial)
        if attempt.decision.action is not Action.DELIVER_TLS:
            dial.mx.close()
            return attempt
        attempt.session = Established(
            dial.mx,
            attempt.decision,
            dial.obs,
            attempt.findings,
            dial.helo_name,
            tls=True,
            tls_version=tls.version,
            cipher=tls.cipher,
        )
        return attempt

    def _conclude(self, dial: Dial, obs: Observation | None = None) -> Attempt:
        """`relay.decision.decide` on what the connection showed (`obs`, or the dial's)."""
        obs = obs or dial.obs
        found = self._with_downgrade(dial.plan.history, obs, dial.findings)
        decision = decide(dial.plan.policy, obs, found, last_mx=dial.plan.last_mx)
        return Attempt(decision, obs, found, dial.helo_name)

    def _context(self, policy: EffectivePolicy, connection: Connection) -> ssl.SSLContext:
        if policy.is_dane:
            return self._dane  # the TLSA records authenticate, not the web PKI (RFC 7672 3.1)
        return self.ssl_context if connection is Connection.VERIFY else self._unverified

    def _dane_check(self, policy: EffectivePolicy, tls: TlsStep) -> TlsStep:
        """The presented chain against the TLSA records; a mismatch is a certificate failure
        (tlsa-invalid) on a connection that is then closed."""
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        verdict = check_chain(policy.tlsa, tls.chain_der, names=policy.dane_names, now=now)
        finding = verdict.finding()
        if finding is None:
            return tls
        return replace(tls, finding=finding, cert_failure=True)

    async def _plaintext(self, dial: Dial, attempt: Attempt, *, helo: bool = True) -> Attempt:
        """Keep the session for plaintext delivery when the decision allows it, else close it."""
        if attempt.decision.action is not Action.DELIVER_PLAINTEXT:
            dial.mx.close()
            return attempt
        if helo and not attempt.obs.ehlo_ok:
            # HELO only when the decision allowed plaintext (never under enforce: TLS-07).
            await dial.mx.helo()
        attempt.session = Established(
            dial.mx, attempt.decision, attempt.obs, attempt.findings, dial.helo_name, tls=False
        )
        return attempt

    def _with_downgrade(
        self, history: HostHistory | None, obs: Observation, findings: tuple[Finding, ...]
    ) -> tuple[Finding, ...]:
        """Add the downgrade finding when this host did better within `history_days`."""
        if any(f.kind is FindingKind.DOWNGRADE for f in findings):
            return findings
        finding = remembered_downgrade(
            history, obs, now=self.clock(), history_days=self.config.detect.history_days
        )
        return (*findings, finding) if finding is not None else findings
