"""The host half of the wire protocol, including what a confused or hostile stream does to it."""

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootlab.vm.protocol import HEADER, MAX_PAYLOAD, Channel, T, decode_exit, encode, encode_exec


def channel_with(data: bytes) -> Channel:
    a, b = socket.socketpair()
    a.sendall(data)
    a.close()
    return Channel(b)


def test_frames_round_trip_in_order() -> None:
    frames = [(T.STDOUT, 1, b"out"), (T.STDERR, 1, b"\0err\xff"), (T.EXIT, 1, struct.pack("<ii", 0, 3))]
    ch = channel_with(b"".join(encode(*f) for f in frames))
    got = [ch.recv() for _ in frames]
    assert [(f.type, f.id, f.payload) for f in got] == frames
    assert decode_exit(got[2].payload) == (False, 3)
    assert ch.recv() is None


def test_exec_encoding() -> None:
    raw = encode_exec(7, ["sh", "-c", "x"], {"A": "1"}, "/tmp", True)
    type_, id_, length = HEADER.unpack_from(raw)
    assert (type_, id_, length) == (T.EXEC, 7, len(raw) - HEADER.size)
    body = raw[HEADER.size:]
    assert struct.unpack_from("<III", body) == (1, 3, 1)
    assert body[12:].split(b"\0")[:-1] == [b"sh", b"-c", b"x", b"A=1", b"/tmp"]


def test_nul_in_an_argument_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        encode_exec(1, ["a\0b"], {}, "/", False)


def test_truncated_stream_ends_cleanly() -> None:
    whole = encode(T.STDOUT, 1, b"abcdef")
    for cut in range(len(whole)):
        assert channel_with(whole[:cut]).recv() is None


def test_oversized_frame_is_an_error_not_a_huge_allocation() -> None:
    ch = channel_with(HEADER.pack(T.STDOUT, 1, MAX_PAYLOAD + 1))
    with pytest.raises(ConnectionError, match="oversized"):
        ch.recv()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_the_reader(data: bytes) -> None:
    ch = channel_with(data)
    try:
        for _ in range(100):
            if ch.recv() is None:
                break
    except ConnectionError:
        pass
