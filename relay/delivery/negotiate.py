"""Setting up a session to one MX address under the domain's TLS policy, for delivery.

`Negotiator.attempt` drives an `MxSession` (banner, EHLO, STARTTLS, handshake, EHLO again) and asks
`relay.decision` after each step what to do. When a certificate fails and the policy allows
delivery anyway, a second connection is made with an unverified context; after a failed STARTTLS
that the policy lets go on in plaintext, a plaintext one. The failure seen first is what the
attempt reports.
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
from relay.decision import (
    Action,
    Connection,
    Decision,
    EffectivePolicy,
    Observation,
    Requirement,
    decide,
    hello_expects_starttls,
    may_retry_unverified,
    mx_matches,
    next_connection,
    remembered_downgrade,
    result_type,
    retry_failed,
    wants_starttls,
)
from relay.delivery.dane_tls import dane_context
from relay.delivery.policy import MxPlan, remembering
from relay.delivery.session import MxSession, TlsStep
from relay.errors import SessionError
from relay.tls import unverified_context


@dataclass(eq=False, slots=True)
class Established:
    """A session ready for MAIL FROM, and what was learned setting it up."""

    mx: MxSession
    decision: Decision
    obs: Observation
    findings: tuple[Finding, ...]
    helo_name: str
    tls: bool
    tls_version: str | None = None
    cipher: str | None = None
    idle_since: float = 0.0


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
    ) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.history = history
        self.clock = clock
        self._unverified = unverified_context()
        self._dane = dane_context()

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
        mx = MxSession(self.config, ip, plan.host)
        _banner, judged = await mx.open()
        findings += judged
        try:
            attempt = await self._negotiate(mx, plan, obs, findings, connection)
        except SessionError:
            mx.close()
            raise
        attempt.sending_ip = mx.sending_ip
        return attempt

    async def _negotiate(
        self,
        mx: MxSession,
        plan: MxPlan,
        obs: Observation,
        findings: tuple[Finding, ...],
        connection: Connection,
    ) -> Attempt:
        policy, history, last_mx = plan.policy, plan.history, plan.last_mx
        hello = await mx.hello(
            expect_starttls=hello_expects_starttls(plan.expect_starttls, connection)
        )
        helo_name = hello.judgement.server_name
        findings += tuple(f for f in hello.judgement.findings if f not in findings)
        obs = replace(
            obs,
            ehlo_ok=hello.ok,
            offered_starttls=hello.ok and hello.judgement.offers_starttls,
        )

        def conclude(obs: Observation, found: tuple[Finding, ...]) -> Attempt:
            found = self._with_downgrade(history, obs, found)
            return Attempt(decide(policy, obs, found, last_mx=last_mx), obs, found, helo_name)

        if not obs.ehlo_ok or connection is Connection.PLAIN or not wants_starttls(policy, obs):
            return await self._plaintext(mx, conclude(obs, findings), helo_name)

        # STARTTLS, sent by us so the receive buffer can be checked before the handshake.
        step = await mx.starttls()
        if step.refusal is not None:
            findings += (step.refusal,)
        if step.reply.code != 220:
            # RFC 3207: after a refused STARTTLS the plaintext session goes on.
            obs = replace(obs, starttls_ok=False)
            return await self._plaintext(mx, conclude(obs, findings), helo_name, helo=False)
        if step.injection is not None:
            # TLS-04: plaintext after the 220 was injected on the path; abort this attempt.
            mx.close()
            return conclude(replace(obs, starttls_ok=False), (*findings, step.injection))
        obs = replace(obs, starttls_ok=True)

        tls = await mx.handshake(self._context(policy, connection), sni=policy.dane_base or None)
        if tls.finding is None and policy.requirement is Requirement.DANE:
            tls = self._dane_check(policy, tls)
            if tls.finding is not None:
                mx.close()
        if tls.finding is not None:
            obs = replace(
                obs,
                handshake_ok=False,
                cert_valid=False if tls.cert_failure else obs.cert_valid,
                tls_result_type=result_type(tls.finding.result_type),
                reason_code=tls.finding.reason_code,
            )
            findings += (tls.finding,)
            attempt = conclude(obs, findings)
            if tls.cert_failure and may_retry_unverified(policy):
                retry = conclude(replace(obs, handshake_ok=True), findings)
                if retry.decision.action is Action.DELIVER_TLS:
                    # Let the caller connect again without verification; report what was seen.
                    return Attempt(retry.decision, obs, retry.findings, helo_name)
            return attempt
        # Under DANE with no usable record the session is encrypted, not authenticated.
        verified = (
            connection is Connection.VERIFY and policy.requirement is not Requirement.DANE_UNUSABLE
        )
        obs = replace(obs, handshake_ok=True, cert_valid=True if verified else obs.cert_valid)
        # TLS-03: forget what was learned before the handshake and say EHLO again.
        again = await mx.hello_again()
        if not again.ok:
            mx.close()
            raise SessionError(f"EHLO after STARTTLS refused: {again.code} {again.text}")
        helo_name = again.judgement.server_name
        obs = replace(obs, offered_requiretls=mx.supports("requiretls"))
        attempt = conclude(obs, findings)
        attempt.helo_name = helo_name
        if attempt.decision.action is not Action.DELIVER_TLS:
            mx.close()
            return attempt
        attempt.session = Established(
            mx,
            attempt.decision,
            obs,
            attempt.findings,
            helo_name,
            tls=True,
            tls_version=tls.version,
            cipher=tls.cipher,
        )
        return attempt

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

    async def _plaintext(
        self, mx: MxSession, attempt: Attempt, helo_name: str, *, helo: bool = True
    ) -> Attempt:
        """Keep the session for plaintext delivery when the decision allows it, else close it."""
        if attempt.decision.action is not Action.DELIVER_PLAINTEXT:
            mx.close()
            return attempt
        if helo and not attempt.obs.ehlo_ok:
            # HELO only when the decision allowed plaintext (never under enforce: TLS-07).
            await mx.helo()
        attempt.session = Established(
            mx, attempt.decision, attempt.obs, attempt.findings, helo_name, tls=False
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
