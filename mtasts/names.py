"""Domain names as they are compared, looked up and reported: lower-case A-labels (IDN-01).

IDNA 2008 with the UTS 46 mapping, non-transitional (the `idna` package), as browsers and
dnspython do: ``faß.de`` is ``xn--fa-hia.de`` (not ``fass.de``, another registrable domain) and
``ς.example`` is ``xn--3xa.example`` (not ``xn--4xa``). Python's own ``"idna"`` codec is IDNA 2003.
"""

from __future__ import annotations

import idna


def a_label(name: str) -> str | None:
    """`name` in lower-case A-labels without a trailing dot; None when it is not a valid IDN.

    ASCII names are only lower-cased (their syntax is checked where it matters).
    """
    name = name.strip()
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if name.isascii():
        return name.lower()
    try:
        return idna.encode(name, uts46=True, transitional=False).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        return None
