"""SM-01: netstring framing as Postfix's socketmap uses it (sans-IO codec)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.socketmap.errors import SocketmapProtocolError
from relay.socketmap.netstring import MAX_QUERY, NetstringDecoder, encode


def test_sm01_encode() -> None:
    assert encode(b"postfix example.com") == b"19:postfix example.com,"
    assert encode(b"") == b"0:,"


def test_sm01_several_requests_in_one_read_and_split_reads() -> None:
    decoder = NetstringDecoder()
    assert decoder.feed(b"3:abc,2:de,1") == [b"abc", b"de"]
    assert decoder.pending == 1
    assert decoder.feed(b":") == []
    assert decoder.feed(b"f,") == [b"f"]
    assert decoder.pending == 0


@pytest.mark.parametrize(
    "data",
    [
        b"3:abcd",  # no comma where the length ends
        b"x:abc,",  # not a length
        b"-1:a,",
        b":abc,",  # empty length
        b"12345678901:",  # a prefix no client sends
        b"3 :abc,",
    ],
)
def test_sm01_malformed_netstring_is_an_error(data: bytes) -> None:
    with pytest.raises(SocketmapProtocolError):
        NetstringDecoder().feed(data)


def test_sm01_query_over_10000_bytes_is_refused_before_it_arrives() -> None:
    decoder = NetstringDecoder()
    assert decoder.feed(encode(b"a" * MAX_QUERY)) == [b"a" * MAX_QUERY]
    with pytest.raises(SocketmapProtocolError, match="10001 bytes"):
        decoder.feed(b"10001:")  # refused on the prefix: nothing is buffered for it
    with pytest.raises(SocketmapProtocolError):
        NetstringDecoder().feed(b"99999")  # a partial prefix already over the limit


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(min_value=1, max_value=50))
def test_sm01_round_trip_in_any_chunking(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(encode(p) for p in payloads)
    decoder = NetstringDecoder()
    got: list[bytes] = []
    for start in range(0, len(stream), chunk):
        got += decoder.feed(stream[start : start + chunk])
    assert got == payloads
    assert decoder.pending == 0


@given(st.binary(max_size=200))
def test_sm01_any_bytes_give_payloads_or_a_protocol_error(data: bytes) -> None:
    try:
        for payload in NetstringDecoder(max_length=100).feed(data):
            assert len(payload) <= 100
    except SocketmapProtocolError:
        pass
