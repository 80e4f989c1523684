"""`stsguard probe DOMAIN [--json]`: what each MX host's EHLO, STARTTLS and TLS look like from here,
what the relay remembers of it, and what the relay would decide.

The MTA-STS policy is looked up live; no message is sent (EHLO, STARTTLS, EHLO, QUIT). The
remembered TLS of each host (`stsguard detect list`) is read from the relay's state, not written;
with it a host that offered STARTTLS or a valid certificate within `[detect].history_days` and no
longer does gets the `downgrade` finding the relay would give it. Each MX host is planned by
`relay.delivery.policy` as delivery plans it (live MTA-STS policy, DANE, override, remembered
TLS), and the decision is the relay's own pure `relay.decision` on what the probe saw. The same
is done for a REQUIRETLS message (RFC 8689): whether one could be delivered now, and if not,
whether it would bounce at once (and with what) or be deferred.
Exit 0 when every MX was probed without findings, 1 when the MX look-up failed, an MX could not be
probed to the end or showed findings, 2 on a bad domain name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, replace
from typing import Any

from detect.dane import DaneStatus
from detect.errors import HistoryStoreError
from detect.history import HostHistory
from detect.model import Finding, FindingKind
from mtasts.parse import policy_domain
from relay.cli.detect import host_json
from relay.config import Config
from relay.decision import (
    Action,
    Decision,
    Observation,
    RequireTlsFailure,
    decide,
    mx_matches,
    remembered_downgrade,
    requiretls_verdict,
    wants_starttls,
)
from relay.delivery.policy import MxPlan, Refusal
from relay.diagnostics.probe import MxProbe, ProbeReport, probe_domain
from relay.errors import UsageError
from relay.log import configure_logging
from relay.resolver import make_resolver
from relay.state.database import StateError
from relay.state.stores import State, open_state, state_exists
from relay.tls import client_context
from tlsrpt_emit.model import result_type_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain")
    p.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass(frozen=True, slots=True)
class Verdict:
    """For one probed MX address: what the relay remembers of the host and would decide."""

    history: HostHistory | None
    downgrade: Finding | None
    decision: Decision
    # What delivery would have found on the way (the downgrade included): the probe's findings
    # but for what followed a STARTTLS delivery would not send.
    findings: tuple[Finding, ...] = ()


# What our STARTTLS and the handshake after it show: delivery sees none of it where it sends none.
_AFTER_STARTTLS = frozenset(
    {
        FindingKind.STARTTLS_REJECTED,
        FindingKind.STARTTLS_BAD_REPLY,
        FindingKind.PLAINTEXT_INJECTION,
        FindingKind.TLS_FAILURE,
        FindingKind.TLSA_MISMATCH,
    }
)


def observation(probe: MxProbe, plan: MxPlan) -> Observation:
    """What the probe saw, as the relay's decision reads a session under `plan`: without our
    STARTTLS and what followed it where delivery would not send one (`tls = "none"`)."""
    ehlo = Observation(
        ehlo_ok=probe.ehlo is not None and 200 <= probe.ehlo.code < 300,
        offered_starttls=probe.ehlo is not None and probe.ehlo.starttls,
        mx_matches=mx_matches(plan.policy, probe.host),
    )
    if not wants_starttls(plan.policy, ehlo):
        return ehlo
    starttls_ok = None
    if probe.starttls_reply is not None:
        injected = any(f.kind is FindingKind.PLAINTEXT_INJECTION for f in probe.findings)
        starttls_ok = probe.starttls_reply.code == 220 and not injected
    tls = probe.tls
    cert_valid = None if tls is None else tls.verified
    if plan.policy.is_dane and probe.dane_status is not None:
        # Under signed TLSA records DANE, not the web PKI, authenticates (RFC 7672 3.1).
        cert_valid = probe.dane_status is DaneStatus.VALID
    return replace(
        ehlo,
        starttls_ok=starttls_ok,
        handshake_ok=None if tls is None else tls.version is not None,
        cert_valid=cert_valid,
        tls_result_type=result_type_of(tls.result_type) if tls and tls.result_type else None,
        offered_requiretls=bool(
            probe.ehlo_after_tls and "REQUIRETLS" in probe.ehlo_after_tls.keywords
        ),
    )


def _findings(probe: MxProbe, plan: MxPlan, obs: Observation) -> tuple[Finding, ...]:
    """The probe's findings delivery would have under `plan` (`observation`'s rule)."""
    if wants_starttls(plan.policy, obs):
        return tuple(probe.findings)
    return tuple(f for f in probe.findings if f.kind not in _AFTER_STARTTLS)


def verdict(probe: MxProbe, plan: MxPlan, *, now: float, history_days: int) -> Verdict:
    """The relay's view of one probed address under its host's plan (pure: `now` is given;
    the remembered TLS is the plan's)."""
    history = plan.history
    if plan.refused_by is Refusal.DANE and plan.refusal is not None:
        # RFC 7672 2.2: never a fall-back
        return Verdict(history, None, plan.refusal, tuple(probe.findings))
    obs = observation(probe, plan)
    downgrade = remembered_downgrade(history, obs, now=now, history_days=history_days)
    findings = _findings(probe, plan, obs) + ((downgrade,) if downgrade else ())
    if plan.refusal is not None:
        return Verdict(history, downgrade, plan.refusal, findings)
    if probe.ehlo is None:  # never got as far as EHLO: the session broke, try the next MX
        reason = probe.error or "no SMTP session"
        action = Action.DEFER if plan.last_mx else Action.NEXT_MX
        return Verdict(history, downgrade, Decision(action, None, reason), findings)
    decision = decide(plan.policy, obs, findings, last_mx=plan.last_mx)
    return Verdict(history, downgrade, decision, findings)


@dataclass(frozen=True, slots=True)
class RequireTlsAnswer:
    """Whether a REQUIRETLS message to the domain could be delivered now: `outcome` is
    delivered | bounced | deferred, `reason` the MX that would take it or why none would."""

    outcome: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "deliverable": self.outcome == "delivered",
            "outcome": self.outcome,
            "reason": self.reason,
        }


def requiretls_answer(
    report: ProbeReport, *, now: float, history_days: int
) -> RequireTlsAnswer | None:
    """The relay's decision for a REQUIRETLS message on what the probe saw (pure), or None
    when there was no MX host to judge."""
    if not report.mx or not report.requiretls_plans:
        return None
    failures: list[RequireTlsFailure] = []
    reasons: list[str] = []
    for probe in report.mx:
        plan = report.requiretls_plans[probe.host]
        decision = verdict(probe, plan, now=now, history_days=history_days).decision
        if decision.action is Action.DELIVER_TLS:
            return RequireTlsAnswer("delivered", f"{probe.host} offers REQUIRETLS over valid TLS")
        failures.append(decision.requiretls or RequireTlsFailure.TEMPORARY)
        reasons.append(f"{probe.host}: {decision.reason}")
    temporary = report.policy_error is not None
    bounce = requiretls_verdict(report.domain, tuple(failures), policy_temporary=temporary)
    if bounce is not None:
        return RequireTlsAnswer("bounced", bounce)
    return RequireTlsAnswer("deferred", "4.7.10 " + "; ".join(reasons))


class RememberedTls:
    """The relay's remembered TLS, read without creating any state (None: nothing remembered,
    or the state cannot be read)."""

    def __init__(self, config: Config) -> None:
        self.state: State | None = None
        if state_exists(config.state_url):
            try:
                self.state = open_state(config.state_url, front=False)
            except StateError:
                self.state = None

    def get(self, host: str) -> HostHistory | None:
        if self.state is None:
            return None
        try:
            return self.state.history.get(host)
        except HistoryStoreError:
            return None

    def close(self) -> None:
        if self.state is not None:
            self.state.close()


def _decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "action": str(decision.action),
        "result_type": decision.result_type,
        "reason": decision.reason,
    }


def _verdict_text(v: Verdict, history_days: int) -> list[str]:
    if v.history is None:
        remembered = "nothing (no earlier session from this relay)"
    else:
        shown = host_json(v.history, history_days)
        remembered = (
            f"starttls={shown['last_starttls_at'] or 'never'} "
            f"valid-cert={shown['last_valid_cert_at'] or 'never'} "
            f"until={shown['remembered_until'] or '-'}"
        )
    lines = [f"  remembered:   {remembered}"]
    d = v.decision
    why = f" ({d.result_type})" if d.result_type else ""
    lines.append(f"  relay would:  {d.action}{why}: {d.reason}")
    return lines


def render(
    report: ProbeReport,
    verdicts: list[Verdict],
    config: Config,
    *,
    as_json: bool,
    requiretls: RequireTlsAnswer | None = None,
) -> str:
    days = config.detect.history_days
    if as_json:
        data = report.as_json()
        for entry, v in zip(data["mx"], verdicts, strict=True):
            entry["remembered"] = host_json(v.history, days) if v.history else None
            entry["decision"] = _decision_json(v.decision)
        data["requiretls"] = requiretls.as_json() if requiretls else None
        return json.dumps(data, indent=2)
    lines = [replace(report, mx=[]).as_text()]
    for probe, v in zip(report.mx, verdicts, strict=True):
        lines += ["", *probe.as_text(), *_verdict_text(v, days)]
    if requiretls is not None:
        word = "yes" if requiretls.outcome == "delivered" else f"no, {requiretls.outcome}"
        lines += ["", f"REQUIRETLS:     {word}: {requiretls.reason}"]
    return "\n".join(lines)


def problems_found(report: ProbeReport, verdicts: list[Verdict]) -> bool:
    """Anything a monitoring check should flag: no MX answer, a probe cut short, findings
    (a remembered-TLS downgrade included)."""
    return bool(
        report.mx_error
        or report.policy_error
        or not report.mx
        or any(m.error or m.findings for m in report.mx)
        or any(v.downgrade for v in verdicts)
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """Entry point of `stsguard probe`."""
    domain = policy_domain(args.domain)
    if domain is None:
        raise UsageError(f"probe: {args.domain!r} is not a domain name")
    configure_logging(config.relay.log_format, "warning")
    resolver = make_resolver(config.dns)
    ctx = client_context(config.tls.ca_file)
    remembered = RememberedTls(config)
    now = time.time()
    try:
        report = asyncio.run(
            probe_domain(
                domain,
                config,
                resolver=resolver,
                ssl_context=ctx,
                history=remembered.get,
                now=now,
            )
        )
    finally:
        remembered.close()
    days = config.detect.history_days
    verdicts = [verdict(m, report.plans[m.host], now=now, history_days=days) for m in report.mx]
    for probe, v in zip(report.mx, verdicts, strict=True):
        if v.downgrade is not None:  # a finding like any other, as the relay logs it
            probe.findings.append(v.downgrade)
    answer = requiretls_answer(report, now=now, history_days=days)
    print(render(report, verdicts, config, as_json=args.json, requiretls=answer))
    return 1 if problems_found(report, verdicts) else 0
