"""Errors of the socketmap server.

StsguardError (relay.errors)
└── SocketmapProtocolError   the client broke the netstring framing or Postfix's size limits;
                             the connection is closed
"""

from __future__ import annotations

from relay.errors import StsguardError


class SocketmapProtocolError(StsguardError):
    """A malformed netstring or an over-long query: the peer is not speaking socketmap."""
