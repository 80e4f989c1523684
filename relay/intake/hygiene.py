"""What an SMTP command line and a MAIL/RCPT address may contain (pure checks).

aiosmtpd ends a command at LF and keeps a bare CR, a NUL or any other control character inside
it; its address parser then accepts ``<"x\\rBcc: spy@evil.test\\r"@good.test>``, and the bare CR
reaches our ``Received:`` header and the next hop. RFC 5321 section 4.1.2 allows no control
character in a path (``qtextSMTP`` and ``quoted-pairSMTP`` are printable ASCII), and section 2.3.8
none in a command line, so they are refused before anything else looks at the command.

Arguments arrive decoded as UTF-8 with ``surrogateescape``: a lone surrogate marks a byte that
was not valid UTF-8. Non-ASCII addresses need ``SMTPUTF8`` on MAIL (RFC 6531: ``553 5.6.7``).
"""

from __future__ import annotations

import ipaddress
import re

# C0 controls, DEL, C1 controls, and the surrogates that surrogateescape puts where UTF-8 was
# invalid.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udcff]")
_INVALID_UTF8 = re.compile("[\udc80-\udcff]")
# One domain label: letters, digits, hyphens (and underscores, seen in real sender domains);
# any non-ASCII character too, which only SMTPUTF8 lets through.
_LABEL = re.compile(r"(?:[A-Za-z0-9_]|[^\x00-\x7f])(?:[A-Za-z0-9_-]|[^\x00-\x7f]){0,62}")
_MAX_PATH = 256  # RFC 5321 section 4.5.3.1.3, with the brackets
_MAX_DOMAIN = 255  # RFC 5321 section 4.5.3.1.2

SYNTAX_CONTROL = "501 5.5.2 Syntax error: control characters are not allowed in commands"
SYNTAX_UTF8 = "501 5.5.2 Syntax error: the command is not valid UTF-8"
BAD_ADDRESS = "553 5.1.3 Error: malformed address"
NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address needs SMTPUTF8 on MAIL FROM"


def command_problem(arg: str | None) -> str | None:
    """The reply for a command argument that must be refused as it is, or None."""
    if arg is None or _FORBIDDEN.search(arg) is None:
        return None
    return SYNTAX_UTF8 if _INVALID_UTF8.search(arg) else SYNTAX_CONTROL


def domain_ok(domain: str) -> bool:
    """A dot-separated host name, or an address literal ``[192.0.2.1]`` / ``[IPv6:2001:db8::1]``."""
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        try:
            if literal[:5].upper() == "IPV6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            return False
        return True
    name = domain[:-1] if domain.endswith(".") else domain
    if not name or len(name.encode("utf-8", "surrogateescape")) > _MAX_DOMAIN:
        return False
    return all(_LABEL.fullmatch(label) and not label.endswith("-") for label in name.split("."))


def address_problem(address: str, *, smtputf8: bool, null_ok: bool) -> str | None:
    """The reply for a MAIL/RCPT address that must be refused, or None.

    `address` is what aiosmtpd's path parser gave (``<>`` for the null sender, allowed only when
    `null_ok`). A local part is accepted as the parser gave it (dot-atom or quoted string); the
    domain must be a host name or an address literal."""
    if address == "<>":
        return None if null_ok else BAD_ADDRESS
    if not address.isprintable():
        # Controls, and also line and paragraph separators and other invisible characters that
        # some parsers take for line ends: nothing a mail address needs.
        return BAD_ADDRESS
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain_ok(domain):
        return BAD_ADDRESS
    if len(address.encode("utf-8")) + 2 > _MAX_PATH:
        return BAD_ADDRESS
    if not smtputf8 and not address.isascii():
        return NEEDS_SMTPUTF8
    return None
