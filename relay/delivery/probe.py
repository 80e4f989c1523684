"""Probe a domain's MX hosts from here: banner, EHLO, STARTTLS, TLS handshake and certificate.

    report = await probe_domain("example.org", config, resolver=..., ssl_context=...)
    report.as_json()  # or report.as_text()

The same `relay.delivery.session.MxSession` steps as delivery (plaintext connect, banner, EHLO, our
own STARTTLS with a look at the receive buffer after the 220, handshake with SNI = the MX host
name), judged by `detect`, but it never sends MAIL: after the handshake it says EHLO again and QUIT.
A certificate that fails verification is reported with its RFC 8460 result type; a second,
unverified connection is made only to read the certificate's details.
The MTA-STS policy is looked up live (TXT record and HTTPS fetch); no cache is read or written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import structlog
from cryptography import x509

from detect.model import Finding, FindingKind
from mtasts.errors import PolicyError
from mtasts.fetch import fetch_policy, lookup_sts_record
from mtasts.match import policy_allows
from mtasts.model import Mode, Policy
from relay.config import Config
from relay.delivery.dane_lookup import TlsaLookup, TlsaStatus, lookup_tlsa
from relay.delivery.dane_view import check_presented
from relay.delivery.mx import MxHost, MxStatus, lookup_mx
from relay.delivery.session import BannerRefused, Hello, MxSession, Reply
from relay.errors import SessionError
from relay.tls import unverified_context

log = structlog.get_logger(__name__)

_QUIT_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class EhloInfo:
    """What an EHLO reply offered."""

    code: int
    keywords: tuple[str, ...]
    starttls: bool

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "keywords": list(self.keywords), "starttls": self.starttls}


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """The MX host's leaf certificate as presented (whether or not it verified)."""

    subject: str
    san: tuple[str, ...]
    issuer: str
    not_after: str

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "san": list(self.san),
            "issuer": self.issuer,
            "not_after": self.not_after,
        }


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The TLS session after STARTTLS. `result_type` is the RFC 8460 type of a failure."""

    version: str | None
    cipher: str | None
    verified: bool
    result_type: str | None = None
    certificate: CertificateInfo | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cipher": self.cipher,
            "verified": self.verified,
            "result_type": self.result_type,
            "certificate": self.certificate.as_json() if self.certificate else None,
        }


@dataclass(slots=True)
class MxProbe:
    """What one address of one MX host showed; `error` says where the probe stopped early."""

    host: str
    preference: int
    address: str | None
    matches_policy: bool | None
    banner: Reply | None = None
    ehlo: EhloInfo | None = None
    starttls_reply: Reply | None = None
    tls: TlsInfo | None = None
    ehlo_after_tls: EhloInfo | None = None
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    dane: dict[str, Any] | None = None  # the presented chain against signed TLSA records
    chain_der: tuple[bytes, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "preference": self.preference,
            "address": self.address,
            "matches_policy": self.matches_policy,
            "banner": self.banner.as_json() if self.banner else None,
            "ehlo": self.ehlo.as_json() if self.ehlo else None,
            "starttls_reply": self.starttls_reply.as_json() if self.starttls_reply else None,
            "tls": self.tls.as_json() if self.tls else None,
            "ehlo_after_tls": self.ehlo_after_tls.as_json() if self.ehlo_after_tls else None,
            "findings": [
                {
                    "kind": str(f.kind),
                    "evidence": f.evidence,
                    "result_type": f.result_type,
                    "reason_code": f.reason_code,
                }
                for f in self.findings
            ],
            "error": self.error,
            "dane": self.dane,
        }

    def as_text(self) -> list[str]:
        note = {None: "", True: ", matches policy", False: ", NOT in policy"}[self.matches_policy]
        lines = [f"MX {self.host} (preference {self.preference}) at {self.address or '-'}{note}"]
        if self.banner:
            lines.append(f"  banner:       {_one_line(self.banner)}")
        if self.ehlo:
            lines.append(f"  EHLO:         {_ehlo_line(self.ehlo)}")
        if self.starttls_reply:
            lines.append(f"  STARTTLS:     {_one_line(self.starttls_reply)}")
        if self.tls:
            lines += _tls_lines(self.tls)
        if self.ehlo_after_tls:
            lines.append(f"  EHLO (TLS):   {_ehlo_line(self.ehlo_after_tls)}")
        if self.dane:
            lines.append(f"  DANE:         {self.dane['status']}: {self.dane['reason']}")
        if self.findings:
            lines.append("  findings:")
            lines += [f"    - {f.kind} ({f.result_type}): {f.evidence}" for f in self.findings]
        else:
            lines.append("  findings:     none")
        if self.error:
            lines.append(f"  error:        {self.error}")
        return lines


@dataclass(slots=True)
class ProbeReport:
    """The probe of one domain: its live policy (if any) and one entry per MX host address."""

    domain: str
    policy: Policy | None = None
    policy_error: PolicyError | None = None
    mx_error: str | None = None
    mx: list[MxProbe] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        policy, error = self.policy, self.policy_error
        return {
            "domain": self.domain,
            "policy": {"mode": str(policy.mode), "mx": list(policy.mx)} if policy else None,
            "policy_error": (
                {"result_type": error.result_type, "message": error.message} if error else None
            ),
            "mx_error": self.mx_error,
            "mx": [m.as_json() for m in self.mx],
        }

    def as_text(self) -> str:
        lines = [f"domain:         {self.domain}"]
        if self.policy:
            mx = ", ".join(self.policy.mx) or "(none)"
            lines.append(f"MTA-STS policy: mode {self.policy.mode}, mx {mx} (fetched live)")
        elif self.policy_error:
            err = self.policy_error
            lines.append(f"MTA-STS policy: not fetched ({err.result_type}): {err.message}")
        else:
            lines.append("MTA-STS policy: none")
        if self.mx_error:
            lines.append(f"MX hosts:       {self.mx_error}")
        for probe in self.mx:
            lines.append("")
            lines += probe.as_text()
        return "\n".join(lines)


def _one_line(reply: Reply) -> str:
    return f"{reply.code} {reply.text.replace(chr(10), ' / ')}"


def _ehlo_line(ehlo: EhloInfo) -> str:
    offers = "STARTTLS offered" if ehlo.starttls else "no STARTTLS"
    return f"{ehlo.code} {' '.join(ehlo.keywords) or '(no keywords)'} [{offers}]"


def _tls_lines(tls: TlsInfo) -> list[str]:
    check = "certificate verified" if tls.verified else f"NOT verified ({tls.result_type})"
    lines = [f"  TLS:          {tls.version or '-'} {tls.cipher or '-'}, {check}"]
    cert = tls.certificate
    if cert:
        lines += [
            f"  subject:      {cert.subject}",
            f"  SAN:          {', '.join(cert.san) or '(none)'}",
            f"  issuer:       {cert.issuer}",
            f"  not after:    {cert.not_after}",
        ]
    return lines


def certificate_info(der: bytes) -> CertificateInfo:
    """Subject, SAN DNS names, issuer and expiry of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        san = tuple(ext.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        san = ()
    not_after = cert.not_valid_after_utc.astimezone(dt.UTC)
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        san=san,
        issuer=cert.issuer.rfc4514_string(),
        not_after=not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


class _Stop(Exception):
    """The probe of this address ends here; what was seen so far is the answer."""


class _Prober:
    """Runs the probe sequence (an `MxSession`'s steps) against one address of one MX host."""

    def __init__(self, config: Config, ssl_context: ssl.SSLContext, *, expect: bool) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.expect = expect

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

        tls = await mx.handshake(self.ssl_context if verify else unverified_context())
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
    probe.dane = {
        "status": str(verdict.status),
        "reason": verdict.reason,
        "tlsa": list(tlsa.policy_strings),
    }
    finding = verdict.finding()
    if finding is not None:
        probe.findings.append(finding)
    elif verdict.ok:
        # A self-signed or private-CA certificate is what DANE-EE/DANE-TA are for.
        probe.findings = [f for f in probe.findings if f.kind is not FindingKind.TLS_FAILURE]


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
        policy = await fetch_policy(
            domain,
            resolver=resolver,
            ssl_context=ctx,
            port=config.mtasts.https_port,
            timeout=config.mtasts.fetch_timeout,
        )
    except PolicyError as exc:
        return None, exc
    return policy, None


async def probe_host(
    host: MxHost,
    config: Config,
    ssl_context: ssl.SSLContext,
    *,
    policy: Policy | None = None,
    tlsa: TlsaLookup | None = None,
) -> list[MxProbe]:
    """Probe every address of one MX host (one entry each; one entry when it has none); with
    signed TLSA records, check the chain each address presented against them (DANE)."""
    matches = policy_allows(policy, host.name) if policy is not None else None
    if not host.addresses:
        probe = MxProbe(host.name, host.preference, None, matches, error="no A or AAAA address")
        return [probe]
    expect = policy is not None and policy.mode in (Mode.ENFORCE, Mode.TESTING)
    prober = _Prober(config, ssl_context, expect=expect)
    probes = [MxProbe(host.name, host.preference, ip, matches) for ip in host.addresses]
    await asyncio.gather(*(prober.probe(p) for p in probes))
    if tlsa is not None:
        for p in probes:
            _judge_dane(p, tlsa)
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
) -> ProbeReport:
    """Look up the live policy and the MX hosts of `domain` (a valid policy domain), and probe
    each MX address concurrently. Unreachable hosts end up in their entry's `error`."""
    report = ProbeReport(domain)
    report.policy, report.policy_error = await live_policy(domain, config, resolver, ssl_context)
    mx = await lookup_mx(domain, resolver)
    if mx.status is not MxStatus.OK:
        report.mx_error = f"{mx.status}: {mx.reason}"
        return report
    hosts = sorted(mx.hosts, key=lambda h: (h.preference, h.name))
    tlsas = [await lookup_tlsa(resolver, h) for h in hosts]
    results = await asyncio.gather(
        *(
            probe_host(h, config, ssl_context, policy=report.policy, tlsa=t)
            for h, t in zip(hosts, tlsas, strict=True)
        )
    )
    report.mx = [probe for probes in results for probe in probes]
    return report
