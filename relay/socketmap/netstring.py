"""Netstrings (``<length>:<bytes>,``) as Postfix's socketmap uses them: a sans-IO codec.

Bytes go in through `NetstringDecoder.feed`, whole payloads come out; `encode` frames one
payload. Postfix caps a query at 10,000 bytes and a reply at 100,000 (`socketmap_table(5)`).
"""

from __future__ import annotations

from relay.socketmap.errors import SocketmapProtocolError

MAX_QUERY = 10_000
MAX_REPLY = 100_000
_MAX_DIGITS = 10  # a length prefix longer than this is no netstring Postfix would send


def encode(payload: bytes) -> bytes:
    """`payload` as one netstring."""
    return b"%d:%b," % (len(payload), payload)


class NetstringDecoder:
    """Splits a byte stream into netstring payloads of at most `max_length` bytes.

    A malformed frame or an over-long one raises `SocketmapProtocolError`; the decoder is then
    unusable (the caller closes the connection: there is no way to find the next frame).
    """

    def __init__(self, max_length: int = MAX_QUERY) -> None:
        self.max_length = max_length
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole netstring."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by `data`, in order."""
        if not self._buffer:
            whole = _single(data, self.max_length)
            if whole is not None:
                return [whole]  # the usual case: one whole request per read
        self._buffer += data
        payloads: list[bytes] = []
        while self._buffer:
            colon = self._buffer.find(b":", 0, _MAX_DIGITS + 1)
            if colon < 0:
                self._check_prefix(bytes(self._buffer[: _MAX_DIGITS + 1]), complete=False)
                break
            length = self._check_prefix(bytes(self._buffer[:colon]), complete=True)
            end = colon + 1 + length
            if len(self._buffer) <= end:
                break
            if self._buffer[end] != ord(","):
                raise SocketmapProtocolError("netstring not terminated by ','")
            payloads.append(bytes(self._buffer[colon + 1 : end]))
            del self._buffer[: end + 1]
        return payloads

    def _check_prefix(self, prefix: bytes, *, complete: bool) -> int:
        """The length a (possibly partial) prefix announces; raise when it cannot be one."""
        if not prefix.isdigit():
            if prefix or complete:
                raise SocketmapProtocolError(f"bad netstring length {prefix[:12]!r}")
            return 0
        if len(prefix) > _MAX_DIGITS:
            raise SocketmapProtocolError("netstring length prefix too long")
        length = int(prefix)
        if length > self.max_length:
            raise SocketmapProtocolError(f"netstring of {length} bytes (at most {self.max_length})")
        return length


def _single(data: bytes, max_length: int) -> bytes | None:
    """The payload when `data` is exactly one well-formed netstring, else None (the general
    path then decides)."""
    colon = data.find(b":", 0, _MAX_DIGITS + 1)
    if colon < 1 or data[-1:] != b"," or not data[:colon].isdigit():
        return None
    length = int(data[:colon])
    if length > max_length or colon + length + 2 != len(data):
        return None
    return data[colon + 1 : -1]
