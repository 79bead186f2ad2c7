"""The origin -> transcoder wire format: round trips, byte-at-a-time feeding, and garbage."""

from __future__ import annotations

import contextlib
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcast.ingest import AudioConfig, MediaKind, MediaPacket, VideoConfig
from meshcast.ingest_wire import End, Hello, WireDecoder, WireError, WireItem, encode

ITEMS: list[WireItem] = [
    Hello("cam-1", secret="s"),
    VideoConfig("h264", b"\x01\x64\x00\x1f", 1280, 720, "High", "3.1", 30.0),
    AudioConfig("aac", b"\x12\x10", 44100, 2),
    MediaPacket(MediaKind.VIDEO, b"\x00\x00\x00\x02\x65\x88", 0, 80, True),
    MediaPacket(MediaKind.AUDIO, b"\x21" * 300, 23, 23, False, Fraction(1, 48000)),
    MediaPacket(MediaKind.VIDEO, b"", -40, -40, False, Fraction(1, 90000)),
    End(),
]


def test_round_trip_whole_and_byte_at_a_time() -> None:
    wire = b"".join(encode(item) for item in ITEMS)
    assert WireDecoder().feed(wire) == ITEMS
    decoder = WireDecoder()
    out: list[WireItem] = []
    for i in range(len(wire)):
        out += decoder.feed(wire[i : i + 1])
    assert out == ITEMS and decoder.pending == 0
    # Trailing partial frame stays buffered, not misparsed.
    decoder = WireDecoder()
    assert decoder.feed(wire + encode(End())[:3]) == ITEMS and decoder.pending == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (encode(End()), "first frame must be a hello"),
        (b"\x00\x00\x00\x00", "out of range"),
        (b"\xff\xff\xff\xff", "out of range"),
        (b"\x00\x00\x00\x02Hx", "malformed hello"),
        (encode(Hello("a")) + b"\x00\x00\x00\x02Zz", "unknown frame type"),
        (encode(Hello("a")) + b"\x00\x00\x00\x03P\x00\x00", "too short"),
        (b'\x00\x00\x00\x20H{"stream": "a", "version": 99}  ', "unsupported hello"),
    ],
)
def test_malformed_input_is_a_wire_error(data: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        WireDecoder().feed(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_never_escapes_as_another_exception(data: bytes) -> None:
    with contextlib.suppress(WireError):
        WireDecoder().feed(encode(Hello("x")) + data)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(MediaKind)),
    st.binary(max_size=2048),
    st.integers(-(2**62), 2**62),
    st.integers(-(2**62), 2**62),
    st.booleans(),
    st.integers(1, 2**31),
    st.integers(1, 2**31),
)
def test_packets_round_trip(
    kind: MediaKind, data: bytes, dts: int, pts: int, key: bool, num: int, den: int
) -> None:
    packet = MediaPacket(kind, data, dts, pts, key, Fraction(num, den))
    assert WireDecoder().feed(encode(Hello("x")) + encode(packet))[1] == packet
