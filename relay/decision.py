"""The delivery decision: policy + what was seen on the wire + findings -> action (pure).

The deliverer asks three questions of one MX session, each answered here without I/O:

1. `screen_mx` before connecting: may this MX host be used at all (STS-11, STS-13)?
2. `wants_starttls` after EHLO: should STARTTLS be tried?
3. `decide` whenever the session has an outcome: deliver over TLS, deliver in plaintext, try the
   next MX, or defer. TLS problems never bounce a message (RFC 8461 section 5: enforce failures are
   temporary); only `decide_expiry` (STS-12), a permanent SMTP reply (`relay.delivery.replies`)
   and REQUIRETLS (`requiretls_verdict`) bounce.

REQUIRETLS (RFC 8689 section 4.2.1) is one rule here: `EffectivePolicy.requiretls` makes every
MX strict, `requiretls_screen` refuses an MX not authenticated by DANE (with a DNSSEC-signed MX
RRset) or an MTA-STS `enforce` policy before connecting, `decide` refuses a validated session
whose EHLO lacks REQUIRETLS, and `requiretls_verdict` bounces when no MX could ever take it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from detect.dane import TlsaRecord
from detect.history import HostHistory, judge_downgrade
from detect.model import Finding, FindingKind
from relay.config import DomainTls
from relay.tls_rules import (
    DANE_OVERRIDES,
    STARTTLS_NOT_SUPPORTED,
    VALIDATION_FAILURE,
    EffectivePolicy,
    Requirement,
    TlsaStatus,
)
from tlsrpt_emit.model import ResultType, result_type_of


class Action(StrEnum):
    """What delivery does with a message after one MX session (or before one)."""

    DELIVER_TLS = "deliver-tls"
    DELIVER_PLAINTEXT = "deliver-plaintext"
    NEXT_MX = "next-mx"
    DEFER = "defer"
    BOUNCE = "bounce"


class RequireTlsFailure(StrEnum):
    """Why one MX could not take a REQUIRETLS message (RFC 8689 4.2.1)."""

    NO_AUTH = "no-auth"  # not authenticated by DANE or MTA-STS enforce: retrying cannot help
    NO_SUPPORT = "no-support"  # validated TLS, but no REQUIRETLS after STARTTLS: permanent
    TEMPORARY = "temporary"  # TLS or the connection failed this time (outage, attack): retried


# The bounces (RFC 8689 section 5 / RFC 3463 status codes it registers).
REQUIRETLS_NO_SUPPORT = "550 5.7.30 REQUIRETLS support required: no MX host of {domain} offers it"
REQUIRETLS_NO_AUTH = (
    "550 5.7.10 REQUIRETLS: no MX host of {domain} is authenticated by DANE or an MTA-STS "
    "policy in enforce mode"
)
# Deferrals say 4.7.10, which a bounce at queue_lifetime reports as 5.7.10.
REQUIRETLS_TEMPORARY = "451 4.7.10 REQUIRETLS: {reason}"


def requiretls_domain_tls(domain_tls: DomainTls, *, requiretls: bool) -> DomainTls:
    """The `[domains."x"].tls` that applies: REQUIRETLS never takes a local override (only DANE
    and MTA-STS authenticate an MX, RFC 8689 4.2.1), but `dane`/`dane-only` keep DANE in."""
    if requiretls and domain_tls not in DANE_OVERRIDES:
        return DomainTls.MTA_STS
    return domain_tls


def dane_for_mx(
    policy: EffectivePolicy,
    tlsa_status: TlsaStatus,
    records: tuple[TlsaRecord, ...] = (),
    names: tuple[str, ...] = (),
    *,
    domain_tls: DomainTls = DomainTls.MTA_STS,
    reason: str = "",
    base: str = "",
    last_mx: bool,
) -> tuple[EffectivePolicy, Decision | None]:
    """The policy for one MX host once its TLSA look-up is known, or why it is not tried.

    `tlsa_status` is what the host's TLSA look-up found (`TlsaStatus`);
    `base` is the TLSA base domain, sent as SNI (RFC 7672 8.1: the MX name unless a CNAME led on).
    - secure TLSA: DANE decides and MTA-STS is not consulted for this MX (RFC 8461 2, STS-14);
      with no usable record TLS is still mandatory (RFC 7672 2.2).
    - bogus (or a failed look-up): a temporary failure for this MX, never a fall-back to
      MTA-STS or plaintext (RFC 7672 2.2); the next MX may still be tried.
    - none/off: DANE does not apply; `dane-only` defers (dane-required), anything else keeps
      `policy`. A local override other than mta-sts/dane/dane-only keeps DANE out altogether.
    `TLS-Required: No` (RFC 8689) ignores DANE as it ignores MTA-STS.
    """
    if domain_tls not in DANE_OVERRIDES or policy.tls_required_no:
        return policy, None
    if tlsa_status is TlsaStatus.SECURE:
        usable = any(r.usable for r in records)
        requirement = Requirement.DANE if usable else Requirement.DANE_UNUSABLE
        dane = EffectivePolicy(
            requirement,
            None,
            policy.tls_required_no,
            policy.on_downgrade,
            tlsa=records,
            dane_names=names,
            dane_base=base,
            requiretls=policy.requiretls,
        )
        return dane, None
    if tlsa_status is TlsaStatus.BOGUS:
        return policy, _give_up(
            ResultType.DNSSEC_INVALID,
            f"TLSA look-up failed: {reason}",
            last_mx=last_mx,
            code="dnssec-bogus",
        )
    if domain_tls == DomainTls.DANE_ONLY:
        why = reason or "no DNSSEC-signed TLSA records"
        return policy, _give_up(
            ResultType.DANE_REQUIRED, f"dane-only: {why}", last_mx=last_mx, code="dane-required"
        )
    return policy, None


@dataclass(frozen=True, slots=True)
class Observation:
    """What one MX session showed so far. None means "not got that far"."""

    ehlo_ok: bool = True
    offered_starttls: bool = False
    starttls_ok: bool | None = None  # the STARTTLS reply was 220 with nothing injected after it
    handshake_ok: bool | None = None  # a TLS session exists (verified or not)
    cert_valid: bool | None = None  # the certificate chain and name validated (STS-10)
    tls_result_type: ResultType | None = None  # why the handshake or certificate failed
    reason_code: str = ""  # failure-reason-code for TLS-RPT
    mx_matches: bool = True  # the MX host matches the MTA-STS policy (only testing gets here)
    offered_requiretls: bool = False  # the EHLO after STARTTLS listed REQUIRETLS (RFC 8689)


def remembered_downgrade(
    history: HostHistory | None, obs: Observation, *, now: float, history_days: int
) -> Finding | None:
    """The `downgrade` finding when this host did better within `history_days` than `obs`
    shows (remembered TLS); None after a verified TLS session."""
    if obs.handshake_ok and obs.cert_valid:
        return None
    return judge_downgrade(
        history,
        # A refused STARTTLS or injected bytes leave no more TLS than a stripped keyword.
        offered_starttls=obs.offered_starttls and obs.starttls_ok is not False,
        cert_valid=obs.cert_valid,
        now=now,
        history_days=history_days,
    )


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    result_type: ResultType | None
    reason: str
    reason_code: str = ""
    requiretls: RequireTlsFailure | None = None  # why a REQUIRETLS message could not go here

    @property
    def delivers(self) -> bool:
        return self.action in (Action.DELIVER_TLS, Action.DELIVER_PLAINTEXT)


def _give_up(
    result_type: ResultType | None, reason: str, *, last_mx: bool, code: str = ""
) -> Decision:
    # RFC 8461 section 5 / STS-13: an MX failing the policy is unreachable; try the next one, and
    # when none is left the failure is temporary.
    return Decision(Action.DEFER if last_mx else Action.NEXT_MX, result_type, reason, code)


def screen_mx(policy: EffectivePolicy, mx_host: str) -> Decision | None:
    """None when `mx_host` may be tried; else why not (STS-11: enforce never uses an unlisted MX).

    Under testing (or `TLS-Required: No`) an unlisted MX is used; `decide` reports it when told
    `mx_matches=False`.
    """
    if mx_matches(policy, mx_host) or not policy.strict:
        return None
    return Decision(Action.NEXT_MX, None, f"MX {mx_host} is not in the policy's mx list")


def requiretls_screen(
    policy: EffectivePolicy, mx_host: str, *, mx_secure: bool, sts_listed: bool
) -> Decision | None:
    """None when a REQUIRETLS message may try `mx_host` under `policy` (the host's, after DANE);
    else why not. RFC 8689 4.2.1: the MX must be authenticated, by a DNSSEC-signed MX RRset with
    DANE for the host, or by an MTA-STS policy in enforce mode that lists it (`sts_listed`);
    `testing`, no policy and local overrides never are."""
    if not policy.requiretls:
        return None
    if policy.requirement is Requirement.STS_ENFORCE:
        return None  # screen_mx keeps out a host the policy does not list (STS-11)
    if policy.requirement is Requirement.DANE and (mx_secure or sts_listed):
        return None
    why = {
        Requirement.DANE: "its TLSA records are signed but the MX records are not",
        Requirement.DANE_UNUSABLE: "it has no usable TLSA record",
        Requirement.STS_TESTING: "the MTA-STS policy is in testing mode",
    }.get(policy.requirement, "the domain has no DANE and no MTA-STS policy")
    return Decision(
        Action.NEXT_MX,
        None,
        f"REQUIRETLS: {mx_host} is not authenticated: {why}",
        requiretls=RequireTlsFailure.NO_AUTH,
    )


def requiretls_verdict(
    domain: str, failures: tuple[RequireTlsFailure, ...], *, policy_temporary: bool
) -> str | None:
    """The bounce reason when no MX of `domain` took a REQUIRETLS message and retrying cannot
    change that (every MX failed for NO_AUTH or NO_SUPPORT); None to defer as usual (some MX
    failed for a reason that may pass, or the MTA-STS policy could not be fetched just now).
    5.7.30 when an authenticated MX lacked REQUIRETLS, else 5.7.10 (RFC 8689 section 5)."""
    if not failures or policy_temporary or RequireTlsFailure.TEMPORARY in failures:
        return None
    if RequireTlsFailure.NO_SUPPORT in failures:
        return REQUIRETLS_NO_SUPPORT.format(domain=domain)
    return REQUIRETLS_NO_AUTH.format(domain=domain)


def mx_matches(policy: EffectivePolicy, mx_host: str) -> bool:
    """True when no MTA-STS policy applies or `mx_host` matches its mx patterns (STS-09)."""
    return policy.policy is None or not policy.is_sts or policy.policy.allows(mx_host)


def wants_starttls(policy: EffectivePolicy, obs: Observation) -> bool:
    """True when STARTTLS should be sent: it was offered and the domain does not forbid TLS.

    Not offered means not sent (RFC 3207); `decide` says what that costs under the policy.
    """
    return obs.ehlo_ok and obs.offered_starttls and policy.requirement is not Requirement.NONE


# A downgrade finding explains why we care, and a masked reply is only evidence of an
# inspecting middlebox: neither says how TLS failed, so neither names the result type.
_EVIDENCE_ONLY = (FindingKind.DOWNGRADE, FindingKind.MASKED_REPLY)


def _tls_failure(obs: Observation, findings: tuple[Finding, ...]) -> tuple[ResultType, str, str]:
    """(result type, reason, reason code) of the way TLS was not had in this session."""
    for finding in findings:
        if finding.kind not in _EVIDENCE_ONLY:
            evidence = f"{finding.kind}: {finding.evidence}"
            return result_type_of(finding.result_type), evidence, finding.reason_code
    if not obs.ehlo_ok:
        return STARTTLS_NOT_SUPPORTED, "EHLO refused (no HELO fallback)", ""
    if not obs.offered_starttls:
        return STARTTLS_NOT_SUPPORTED, "STARTTLS not offered", ""
    if obs.starttls_ok is False:
        return STARTTLS_NOT_SUPPORTED, "STARTTLS refused", ""
    failed = obs.tls_result_type or VALIDATION_FAILURE
    if obs.handshake_ok is False:
        return failed, "TLS handshake failed", obs.reason_code
    return failed, "certificate did not validate", obs.reason_code


def decide(
    policy: EffectivePolicy,
    obs: Observation,
    findings: tuple[Finding, ...] = (),
    *,
    last_mx: bool,
) -> Decision:
    """The outcome of one MX session given what was observed (see the module docstring).

    `obs` describes the best the session reached: a verified TLS session, an unverified one, or
    none. With an unverified session (`cert_valid` False and `handshake_ok` True) the caller has
    already connected again without verification, which only happens when this function allowed it.
    """
    clean = obs.handshake_ok is True and obs.cert_valid is True
    if policy.requiretls:
        return _decide_requiretls(policy, obs, findings, last_mx=last_mx)
    if clean and obs.mx_matches:
        return Decision(Action.DELIVER_TLS, None, "TLS with a valid certificate")
    if not obs.mx_matches and policy.strict:
        # STS-11: screen_mx normally keeps such an MX from being tried at all.
        return _give_up(None, "MX not in the policy", last_mx=last_mx)
    if clean:
        # testing or `TLS-Required: No`: deliver, report the MX mismatch.
        return Decision(
            Action.DELIVER_TLS, VALIDATION_FAILURE, "MX not in the policy", "mx-not-in-policy"
        )

    if policy.requirement is Requirement.NONE:
        return _tls_disabled(policy, obs, findings)
    return _without_valid_tls(policy, obs, findings, last_mx=last_mx)


def _without_valid_tls(
    policy: EffectivePolicy, obs: Observation, findings: tuple[Finding, ...], *, last_mx: bool
) -> Decision:
    """`decide` for a session that did not reach TLS with a valid certificate."""
    tls_up = obs.handshake_ok is True
    result_type, reason, code = _tls_failure(obs, findings)
    downgrade = next((f for f in findings if f.kind is FindingKind.DOWNGRADE), None)
    if policy.strict:
        # TLS-07: no plaintext and no HELO fallback; STS-11: no invalid certificate.
        if tls_up and not policy.needs_valid_cert:
            why = "TLS without certificate check (encrypt)"
            if policy.published is None:
                return Decision(Action.DELIVER_TLS, None, why)
            # The domain publishes MTA-STS (an override applied): the session failed it.
            return Decision(Action.DELIVER_TLS, result_type, why, code)
        return _give_up(result_type, reason, last_mx=last_mx, code=code)

    if (
        downgrade is not None
        and not policy.is_sts
        and policy.on_downgrade == "defer"
        and not policy.tls_required_no
    ):
        # A host that spoke valid TLS within detect.history_days no longer does: an attack
        # until proven otherwise (remembered TLS, like SSH's known hosts).
        return _give_up(
            result_type, f"downgrade: {downgrade.evidence}; {reason}", last_mx=last_mx, code=code
        )

    # testing, opportunistic, or enforce with `TLS-Required: No`: deliver anyway; report only
    # under an MTA-STS policy (RPT-06; applied, or published under an override), a no-policy
    # session is counted as it is.
    reported = result_type if policy.reports_sts else None
    reported_code = code if policy.reports_sts else ""
    if tls_up:
        return Decision(Action.DELIVER_TLS, reported, f"TLS, {reason}", reported_code)
    return Decision(Action.DELIVER_PLAINTEXT, reported, f"plaintext, {reason}", reported_code)


def _tls_disabled(
    policy: EffectivePolicy, obs: Observation, findings: tuple[Finding, ...]
) -> Decision:
    """`tls = "none"`: plaintext. When the domain publishes an MTA-STS policy the session
    failed it and is reported so (RFC 8460 4.3), never as a no-policy success that would hide
    an attack from the domain's owner: as what the path did when a finding or a missing
    STARTTLS says it, else as our own choice (validation-failure, the catch-all)."""
    if policy.published is None:
        return Decision(Action.DELIVER_PLAINTEXT, None, "TLS disabled for this domain")
    seen = any(f.kind not in _EVIDENCE_ONLY for f in findings)
    if seen or not obs.ehlo_ok or not obs.offered_starttls:
        failed, reason, code = _tls_failure(obs, findings)
    else:
        failed, reason, code = VALIDATION_FAILURE, "not tried", "tls-disabled-locally"
    why = f"TLS disabled for this domain (it publishes MTA-STS); {reason}"
    return Decision(Action.DELIVER_PLAINTEXT, failed, why, code)


def _decide_requiretls(
    policy: EffectivePolicy, obs: Observation, findings: tuple[Finding, ...], *, last_mx: bool
) -> Decision:
    """`decide` for a REQUIRETLS message: validated TLS to a listed MX that offers REQUIRETLS
    after STARTTLS, else this MX failed (never plaintext, never an unverified session). The
    TLS-RPT result type is what it would be without REQUIRETLS: a clean session is a success."""
    if policy.requirement not in (Requirement.STS_ENFORCE, Requirement.DANE):
        # `requiretls_screen` keeps such an MX from being dialled at all.
        failed = _give_up(None, "REQUIRETLS: MX not authenticated", last_mx=last_mx)
        return replace(failed, requiretls=RequireTlsFailure.NO_AUTH)
    if obs.handshake_ok is True and obs.cert_valid is True and obs.mx_matches:
        if obs.offered_requiretls:
            return Decision(Action.DELIVER_TLS, None, "TLS with a valid certificate, REQUIRETLS")
        failed = _give_up(None, "no REQUIRETLS after STARTTLS", last_mx=last_mx)
        return replace(failed, requiretls=RequireTlsFailure.NO_SUPPORT)
    if not obs.mx_matches:
        failed = _give_up(None, "MX not in the policy", last_mx=last_mx)
    else:
        failure, reason, code = _tls_failure(obs, findings)
        failed = _give_up(failure, reason, last_mx=last_mx, code=code)
    return replace(failed, requiretls=RequireTlsFailure.TEMPORARY)


def decide_expiry(
    *, tls_failure: bool, failed_policy_id: str | None, live_policy_id: str | None
) -> Decision:
    """STS-12: a message past queue_lifetime bounces, unless its last failure was an MTA-STS
    failure and the `_mta-sts` TXT id changed since: then it is tried once more with the new policy.

    `failed_policy_id` is the record id the failing policy had, `live_policy_id` the id the caller
    just looked up (None when there is no record now).
    """
    if tls_failure and live_policy_id is not None and live_policy_id != failed_policy_id:
        return Decision(
            Action.DEFER, None, f"policy id changed ({failed_policy_id} -> {live_policy_id})"
        )
    return Decision(Action.BOUNCE, None, "queue lifetime expired")
