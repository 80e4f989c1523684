"""TLS for a DANE session: a context that leaves authentication to the TLSA records, and the
chain the server presented, read from the SSL object.

Python's public API gives only the leaf (`getpeercert`); DANE-TA needs the intermediates the
server sent. `SSLObject._sslobj.get_unverified_chain()` (CPython 3.10+, OpenSSL's
SSL_get_peer_cert_chain) gives them; a test fails if it ever goes away
(tests/relay/test_dane_delivery.py). Without it only the leaf is checked, which is enough for
DANE-EE.
"""

from __future__ import annotations

import ssl
from typing import Any


def dane_context() -> ssl.SSLContext:
    """TLS 1.2+ without PKIX checks: under DANE the TLSA records decide (RFC 7672 3.1)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def presented_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """The certificates the server sent, leaf first, DER; just the leaf when the full chain
    cannot be read."""
    inner: Any = getattr(ssl_object, "_sslobj", None)
    get_chain = getattr(inner, "get_unverified_chain", None)
    if get_chain is not None:
        chain = get_chain() or []
        return tuple(cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in chain)  # type: ignore[attr-defined]
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()
