"""The aiosmtplib internals `relay/delivery/starttls.py` relies on still exist and behave.

pyproject.toml bounds aiosmtplib below the next major version; this test is what fails first when
an upgrade inside the bound changes one of them (then adapt starttls.py, not this test).
"""

from __future__ import annotations

import asyncio
import inspect

import aiosmtplib
import aiosmtplib.protocol
import pytest
from aiosmtplib.protocol import SMTPProtocol

from relay.delivery.starttls import _StrictReplyProtocol


def test_the_protocol_internals_exist() -> None:
    protocol = SMTPProtocol(loop=asyncio.new_event_loop())
    for name in ("_buffer", "_over_ssl", "_command_lock", "_response_pending"):
        assert hasattr(protocol, name), name
    assert isinstance(protocol._buffer, bytearray)
    assert callable(SMTPProtocol._read_response_from_buffer)
    assert "_read_response_from_buffer" in inspect.getsource(SMTPProtocol.data_received)
    # send_body sets _response_pending before writing: data_received must still gate on it.
    assert "_response_pending" in inspect.getsource(SMTPProtocol.data_received)


def test_the_client_internals_exist() -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=9, start_tls=False)
    assert callable(client._reset_server_state)
    assert client.protocol is None
    assert hasattr(client, "timeout")


def test_the_reply_parser_reads_from_the_buffer() -> None:
    protocol = _StrictReplyProtocol(loop=asyncio.new_event_loop())
    protocol._buffer.extend(b"250-first\r\n250 second\r\n")
    response = protocol._read_response_from_buffer()
    assert response is not None
    assert (response.code, response.message) == (250, "first\nsecond")
    assert protocol._buffer == bytearray()  # the reply was taken out of the buffer
    protocol._buffer.extend(b"250-first\r\n550 second\r\n")
    with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
        protocol._read_response_from_buffer()
    assert caught.value.code == -1


def test_the_reader_internals_pipelining_relies_on() -> None:
    """`pipelined` keeps bytes aiosmtplib would drop and parses leftovers before awaiting."""
    assert isinstance(aiosmtplib.protocol.MAX_RESPONSE_LENGTH, int)
    # A pipelined group refuses what `execute_command` refuses, with aiosmtplib's own pattern.
    assert aiosmtplib.protocol.COMMAND_INJECTION_REGEX.search(b"a\r\nb")
    assert "COMMAND_INJECTION_REGEX" in inspect.getsource(SMTPProtocol.execute_command)
    protocol = SMTPProtocol(loop=asyncio.new_event_loop())
    assert hasattr(protocol, "_response_waiter")
    received = inspect.getsource(SMTPProtocol.data_received)
    # The gate our override sits in front of: data with no reply awaited is dropped.
    assert "not self._response_pending or self._response_waiter.done()" in received
    assert "MAX_RESPONSE_LENGTH" in received
    read = inspect.signature(SMTPProtocol.read_response)
    assert list(read.parameters) == ["self", "timeout"]
    source = inspect.getsource(SMTPProtocol.read_response)
    assert "self._response_waiter = self._loop.create_future()" in source
    assert "self._response_pending = False" in source


class _Transport(asyncio.Transport):
    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def test_aiosmtplib_still_drops_data_nobody_waits_for() -> None:
    """What `_StrictReplyProtocol.data_received` works around while pipelining."""
    loop = asyncio.new_event_loop()
    try:
        plain = SMTPProtocol(loop=loop)
        strict = _StrictReplyProtocol(loop=loop)
        for protocol in (plain, strict):
            protocol.connection_made(_Transport())
            protocol._response_pending = False  # between commands
        strict._pipelining = True
        for protocol in (plain, strict):
            protocol.data_received(b"250 ok\r\n")
        assert plain._buffer == bytearray()
        assert strict._buffer == bytearray(b"250 ok\r\n")
    finally:
        loop.close()
