"""Which connections one attempt on one MX address makes (pure): verified TLS first; then,
only when `relay.decision.decide` let the message go anyway, unverified TLS after a certificate
failure or plaintext after a failed STARTTLS. `relay.delivery.negotiate` follows this plan."""

from __future__ import annotations

from enum import StrEnum

from relay.decision import Action, Decision
from relay.tls_rules import EffectivePolicy, Requirement


class Connection(StrEnum):
    """What one connection to an MX address tries: verified TLS, unverified TLS (after a
    certificate failure), or plaintext (after a failed STARTTLS the policy lets go on)."""

    VERIFY = "verify"
    UNVERIFIED = "unverified"
    PLAIN = "plain"


def next_connection(decision: Decision) -> Connection | None:
    """After a connection that set up no session for the message, the one to make next (None:
    give up on this address). Only when `decide` let the message go anyway: unverified TLS when
    it allowed TLS, plaintext when it allowed plaintext."""
    if not decision.delivers:
        return None
    return Connection.UNVERIFIED if decision.action is Action.DELIVER_TLS else Connection.PLAIN


def retry_failed(
    decision: Decision, connection: Connection, error: str, *, last_mx: bool
) -> Decision:
    """The decision when the connection `next_connection` asked for broke: the TLS failure
    already seen stays the session's result for TLS-RPT; the MX is given up."""
    action = Action.DEFER if last_mx else Action.NEXT_MX
    reason = f"{decision.reason}; {connection} retry failed: {error}"
    return Decision(action, decision.result_type, reason, decision.reason_code)


def hello_expects_starttls(expect_starttls: bool, connection: Connection) -> bool:
    """True when a missing STARTTLS in this connection's EHLO reply is a finding (stripped):
    as the plan says (`relay.delivery.policy.expects_starttls`), except on the plaintext
    connection, which does not ask for TLS."""
    return expect_starttls and connection is not Connection.PLAIN


def may_retry_unverified(policy: EffectivePolicy) -> bool:
    """True when a certificate failure may be followed by an unverified TLS session."""
    return policy.requirement is not Requirement.NONE and not policy.needs_valid_cert
