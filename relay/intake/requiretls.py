"""REQUIRETLS at intake (RFC 8689 section 4.1): who may use it, and the MAIL parameter taken
apart before aiosmtpd reads the rest (it would silently keep one of a repeated pair)."""

from __future__ import annotations

from collections.abc import Iterable

from relay.intake.rules import IPNetwork, client_allowed, client_ip


def requiretls_offered(
    *, tls: bool, client: str, networks: Iterable[IPNetwork], loopback_ok: bool
) -> bool:
    """True when this session may use REQUIRETLS (RFC 8689 section 4.1: a TLS session), or it is
    a plaintext loopback session from `networks` and ``[relay].requiretls_loopback`` is set (the
    hop from a local MTA or content filter, as Postfix's ``smtp_requiretls_policy`` exempts it)."""
    if tls:
        return True
    if not loopback_ok or not client_allowed(client, networks):
        return False
    ip = client_ip(client)
    return ip is not None and ip.is_loopback


def split_requiretls(arg: str) -> tuple[str, list[str]]:
    """The MAIL argument without its REQUIRETLS parameters, and those parameters as given.
    Only words after the path's closing ``>`` are parameters (a quoted local part may hold
    anything)."""
    end = arg.rfind(">")
    if end < 0:
        return arg, []
    words = arg[end + 1 :].split()
    found = [w for w in words if w.upper().partition("=")[0] == "REQUIRETLS"]
    if not found:
        return arg, []
    rest = [w for w in words if w not in found]
    return " ".join([arg[: end + 1], *rest]), found


def requiretls_refusal(found: list[str], *, allowed: bool) -> str | None:
    """The reply to MAIL with these REQUIRETLS parameters, or None when it is accepted."""
    if any("=" in w for w in found):
        return "501 5.5.4 REQUIRETLS takes no value"
    if len(found) > 1:
        return "501 5.5.4 REQUIRETLS given more than once"
    if not allowed:
        return "530 5.7.10 REQUIRETLS needs a TLS-protected session: use STARTTLS first"
    return None
