"""Probe a domain's MX hosts from here: banner, EHLO, STARTTLS, TLS handshake and certificate.

    report = await probe_domain("example.org", config, resolver=..., ssl_context=...,
                                history=remembered_tls.get)
    report.as_json()  # or report.as_text(); report.plans: each MX host's plan

The same `relay.delivery.session.MxSession` steps as delivery (plaintext connect, banner, EHLO, our
own STARTTLS with a look at the receive buffer after the 220, handshake with the plan's SNI),
judged by `detect`, but it never sends MAIL: after the handshake it says EHLO again and QUIT.
A certificate that fails verification is reported with its RFC 8460 result type; a second,
unverified connection is made only to read the certificate's details.
The MTA-STS policy is looked up live (TXT record and HTTPS fetch); no cache is read or written.
Each MX host is planned by `relay.delivery.policy`, as delivery plans it, so the probe expects
STARTTLS, sends SNI and checks DANE exactly as delivery does. It says STARTTLS whenever the host
offers it, to show what the host speaks, also where delivery would not (`tls = "none"`); the
relay's decision on what it saw (`relay.cli.probe.verdict`) leaves that out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from dataclasses import replace

import dns.asyncresolver
import structlog

from detect.model import FindingKind
from mtasts.errors import PolicyError
from mtasts.fetch import fetch_policy, lookup_sts_record
from mtasts.match import policy_allows
from mtasts.model import Policy, PolicyResult, PolicySource
from relay.config import Config
from relay.delivery.dane_lookup import TlsaLookup, TlsaStatus
from relay.delivery.mx import MxHost, MxStatus, lookup_mx
from relay.delivery.policy import DestinationView, MxPlan
from relay.delivery.policy_lookup import HistoryLookup, lookup_destination
from relay.delivery.session import BannerRefused, Hello, MxSession
from relay.diagnostics.dane_view import check_presented
from relay.diagnostics.probe_report import (
    EhloInfo,
    MxProbe,
    ProbeReport,
    TlsInfo,
    certificate_info,
)
from relay.errors import SessionError
from relay.tls import unverified_context

__all__ = [
    "EhloInfo",
    "MxProbe",
    "ProbeReport",
    "TlsInfo",
    "fetch_live",
    "live_policy",
    "probe_domain",
    "probe_host",
]

log = structlog.get_logger(__name__)

_QUIT_TIMEOUT = 2.0


class _Stop(Exception):
    """The probe of this address ends here; what was seen so far is the answer."""


class _Prober:
    """Runs the probe sequence (an `MxSession`'s steps) against one address of one MX host."""

    def __init__(self, config: Config, ssl_context: ssl.SSLContext, *, plan: MxPlan) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.expect = plan.expect_starttls
        self.sni = plan.sni

    async def probe(self, probe: MxProbe) -> None:
        """Fill `probe` in: verified first, then (after a certificate failure) unverified."""
        assert probe.address is not None
        mx = MxSession(self.config, probe.address, probe.host)
        try:
            await self._session(mx, probe, verify=True)
        except _Stop:
            pass
        except SessionError as exc:
            probe.error = f"{_stage(probe)}: {_describe(exc.__cause__ or exc)}"
            return
        finally:
            await mx.quit(grace=_QUIT_TIMEOUT)
        if probe.tls is None or probe.tls.verified or probe.error is not None:
            return
        # The certificate failed: connect again, unverified, only to read what it says.
        mx = MxSession(self.config, probe.address, probe.host)
        seen = MxProbe(probe.host, probe.preference, probe.address, probe.matches_policy)
        try:
            await self._session(mx, seen, verify=False)
        except _Stop:
            pass
        except SessionError as exc:
            cause = exc.__cause__ or exc
            probe.error = f"unverified retry to read the certificate: {_describe(cause)}"
        finally:
            await mx.quit(grace=_QUIT_TIMEOUT)
        if seen.tls is not None:
            probe.tls = TlsInfo(
                seen.tls.version,
                seen.tls.cipher,
                verified=False,
                result_type=probe.tls.result_type,
                certificate=seen.tls.certificate,
            )
            probe.ehlo_after_tls = seen.ehlo_after_tls
            probe.chain_der = seen.chain_der

    async def _session(self, mx: MxSession, probe: MxProbe, *, verify: bool) -> None:
        """One connection: banner, EHLO, STARTTLS, handshake, EHLO again. Raises `_Stop` when
        the sequence cannot go on (no STARTTLS, refused, injected bytes, handshake failed)."""
        try:
            probe.banner, judged = await mx.open()
        except BannerRefused as exc:
            probe.banner = exc.banner
            probe.findings += exc.findings
            probe.error = f"banner refused: {exc.banner.code} {exc.banner.text}"
            raise _Stop from exc
        probe.findings += judged

        hello = await mx.hello(expect_starttls=self.expect)
        probe.ehlo = _ehlo_info(hello)
        probe.findings += hello.judgement.findings
        if not hello.ok or not hello.judgement.offers_starttls:
            raise _Stop

        step = await mx.starttls()
        probe.starttls_reply = step.reply
        if step.refusal is not None:
            probe.findings.append(step.refusal)
            raise _Stop
        if step.injection is not None:
            probe.findings.append(step.injection)
            mx.close()  # the path is tampered with: no handshake, no QUIT
            raise _Stop

        tls = await mx.handshake(self.ssl_context if verify else unverified_context(), sni=self.sni)
        if tls.finding is not None:
            probe.findings.append(tls.finding)
            probe.tls = TlsInfo(None, None, verified=False, result_type=tls.finding.result_type)
            if not tls.cert_failure and tls.error is not None:
                probe.error = f"TLS handshake: {_describe(tls.error)}"
            raise _Stop
        probe.tls = TlsInfo(
            tls.version,
            tls.cipher,
            verified=verify,
            certificate=certificate_info(tls.peer_der) if tls.peer_der else None,
        )
        probe.chain_der = tls.chain_der
        probe.ehlo_after_tls = _ehlo_info(await mx.hello_again())


def _judge_dane(probe: MxProbe, tlsa: TlsaLookup) -> None:
    """Under signed TLSA records DANE, not the web PKI, decides (RFC 7672 3.1, STS-14)."""
    if tlsa.status is TlsaStatus.BOGUS:
        # Delivery defers for this host (dnssec-invalid): a problem the probe must flag.
        probe.dane = {"status": "bogus", "reason": tlsa.reason, "tlsa": []}
        probe.error = probe.error or f"TLSA look-up bogus: {tlsa.reason}"
        return
    if not probe.chain_der:
        return
    verdict = check_presented(tlsa, probe.chain_der, now=dt.datetime.now(dt.UTC))
    if verdict is None:
        return
    probe.dane_status = verdict.status
    probe.dane = {
        "status": str(verdict.status),
        "reason": verdict.reason,
        "tlsa": list(tlsa.policy_strings),
    }
    # The handshake got as far as a chain: a TLS failure seen was the web PKI's verdict, which
    # does not count where the TLSA records decide (RFC 7672 3.1; delivery never asks it), and
    # a self-signed or private-CA certificate is what DANE-EE/DANE-TA are for.
    probe.findings = [f for f in probe.findings if f.kind is not FindingKind.TLS_FAILURE]
    finding = verdict.finding()
    if finding is not None:
        probe.findings.append(finding)


def _ehlo_info(hello: Hello) -> EhloInfo:
    return EhloInfo(hello.code, hello.judgement.keywords, hello.judgement.offers_starttls)


def _stage(probe: MxProbe) -> str:
    """Where a probe that broke off was: the first step without an answer."""
    if probe.banner is None:
        return "connect"
    if probe.ehlo is None:
        return "EHLO"
    if probe.starttls_reply is None:
        return "STARTTLS"
    if probe.tls is None:
        return "TLS handshake"
    return "EHLO after TLS"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def live_policy(
    domain: str, config: Config, resolver: dns.asyncresolver.Resolver, ctx: ssl.SSLContext
) -> tuple[Policy | None, PolicyError | None]:
    """The domain's MTA-STS policy fetched now (no cache), or why there is none."""
    try:
        record = await lookup_sts_record(domain, resolver)
        if record is None:
            return None, None
        policy = await fetch_live(domain, config, resolver, ctx)
    except PolicyError as exc:
        return None, exc
    return policy, None


async def fetch_live(
    domain: str, config: Config, resolver: dns.asyncresolver.Resolver, ctx: ssl.SSLContext
) -> Policy:
    """The domain's policy file fetched now over `[mtasts]`'s port and timeout (`PolicyError`:
    why not), with no look at the TXT record."""
    return await fetch_policy(
        domain,
        resolver=resolver,
        ssl_context=ctx,
        port=config.mtasts.https_port,
        timeout=config.mtasts.fetch_timeout,
    )


async def probe_host(
    host: MxHost,
    config: Config,
    ssl_context: ssl.SSLContext,
    *,
    plan: MxPlan,
    policy: Policy | None = None,
) -> list[MxProbe]:
    """Probe every address of one MX host (one entry each; one entry when it has none) under
    its plan: STARTTLS is expected as delivery expects it (`MxPlan.expect_starttls`); where DANE
    applies, the chain each address presented is checked against the TLSA records."""
    matches = policy_allows(policy, host.name) if policy is not None else None
    if not host.addresses:
        probe = MxProbe(host.name, host.preference, None, matches, error="no A or AAAA address")
        return [probe]
    prober = _Prober(config, ssl_context, plan=plan)
    probes = [MxProbe(host.name, host.preference, ip, matches) for ip in host.addresses]
    await asyncio.gather(*(prober.probe(p) for p in probes))
    if plan.tlsa is not None:
        for p in probes:
            _judge_dane(p, plan.tlsa)
    for p in probes:
        log.info(
            "probe.mx",
            mx_host=p.host,
            mx_ip=p.address,
            tls_version=p.tls.version if p.tls else None,
            verified=p.tls.verified if p.tls else None,
            findings=[f.as_log() for f in p.findings],
            error=p.error,
        )
    return probes


async def probe_domain(
    domain: str,
    config: Config,
    *,
    resolver: dns.asyncresolver.Resolver,
    ssl_context: ssl.SSLContext,
    history: HistoryLookup | None = None,
    now: float | None = None,
) -> ProbeReport:
    """Look up the live policy and the MX hosts of `domain` (a valid policy domain), plan each MX
    host as delivery would (`relay.delivery.policy`, with `history` as remembered TLS), and probe
    each MX address concurrently. Unreachable hosts end up in their entry's `error`."""
    report = ProbeReport(domain)
    report.policy, report.policy_error = await live_policy(domain, config, resolver, ssl_context)
    mx = await lookup_mx(domain, resolver)
    if mx.status is not MxStatus.OK:
        report.mx_error = f"{mx.status}: {mx.reason}"
        return report
    hosts = tuple(sorted(mx.hosts, key=lambda h: (h.preference, h.name)))
    live = PolicyResult(
        domain, report.policy, PolicySource.FRESH if report.policy else PolicySource.NONE
    )

    async def sts(_domain: str) -> PolicyResult:
        return live

    async def planned(*, requiretls: bool) -> DestinationView:
        return await lookup_destination(
            domain,
            config,
            resolver=resolver,
            sts=sts,
            history=history,
            now=time.time() if now is None else now,
            mx=replace(mx, hosts=hosts),
            requiretls=requiretls,
        )

    view = await planned(requiretls=False)
    report.plans = {plan.host: plan for plan in view.plans}
    # The same hosts planned for a REQUIRETLS message (RFC 8689): what `stsguard probe` says of it.
    strict = await planned(requiretls=True)
    report.requiretls_plans = {plan.host: plan for plan in strict.plans}
    results = await asyncio.gather(
        *(
            probe_host(h, config, ssl_context, plan=plan, policy=report.policy)
            for h, plan in zip(hosts, view.plans, strict=True)
        )
    )
    report.mx = [probe for probes in results for probe in probes]
    return report
