"""Domain names as reports write them: lower-case A-labels (IDN-01, RPT-07).

IDNA 2008 with the UTS 46 mapping, non-transitional (the `idna` package), as the relay's MX and
policy look-ups name them: ``faß.de`` is ``xn--fa-hia.de`` (Python's ``"idna"`` codec is IDNA 2003
and would give ``fass.de``, another registrable domain). `mtasts.names` is the same rule for
MTA-STS; the two packages do not import each other.
"""

from __future__ import annotations

import contextlib

import idna


def a_label(domain: str) -> str:
    """`domain` in lower-case A-labels without a trailing dot; a name that is not a valid IDN is
    only lower-cased."""
    name = domain.strip()
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if not name.isascii():
        with contextlib.suppress(idna.IDNAError, UnicodeError):
            name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
    return name.lower()
