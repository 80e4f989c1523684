"""What `stsguard probe` saw of each MX address, and how it is shown (JSON and text)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from detect.dane import DaneStatus
from detect.model import Finding
from mtasts.errors import PolicyError
from mtasts.model import Policy
from relay.delivery.policy import MxPlan
from relay.delivery.session import Reply


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
    dane_status: DaneStatus | None = None  # what that check found (None: not checked)
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
    plans: dict[str, MxPlan] = field(default_factory=dict)  # each MX host's plan, by name
    requiretls_plans: dict[str, MxPlan] = field(default_factory=dict)  # ... for REQUIRETLS

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
