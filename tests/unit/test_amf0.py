from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from origin import amf0

# A real onMetaData body as FFmpeg 5.1 sends it (@setDataFrame, onMetaData, ECMA array).
FFMPEG_METADATA = amf0.encode(
    "@setDataFrame",
    "onMetaData",
    amf0.EcmaArray(
        duration=0.0,
        width=640.0,
        height=360.0,
        videodatarate=0.0,
        framerate=25.0,
        videocodecid=7.0,
        audiodatarate=125.0,
        audiosamplerate=44100.0,
        audiosamplesize=16.0,
        stereo=False,
        audiocodecid=10.0,
        encoder="Lavf59.27.100",
        filesize=0.0,
    ),
)


def test_connect_command_round_trip() -> None:
    values = [
        "connect",
        1.0,
        {"app": "live", "tcUrl": "rtmp://127.0.0.1:1935/live", "fpad": False},
    ]
    raw = amf0.encode(*values)
    assert amf0.decode(raw) == values
    assert amf0.encode(*amf0.decode(raw)) == raw


def test_metadata_golden_round_trip() -> None:
    decoded = amf0.decode(FFMPEG_METADATA)
    assert decoded[0] == "@setDataFrame"
    assert isinstance(decoded[2], amf0.EcmaArray)
    assert decoded[2]["width"] == 640.0
    assert amf0.encode(*decoded) == FFMPEG_METADATA


def test_all_types_round_trip() -> None:
    values: list[Any] = [
        None,
        amf0.UNDEFINED,
        True,
        -1.5,
        "x" * 70_000,  # long string
        [1.0, "a", None],
        amf0.AmfDate(1_700_000_000_000.0, 0),
        amf0.TypedObject("com.example.Thing", {"a": 1.0}),
        {"nested": {"deeper": amf0.EcmaArray(k="v")}},
    ]
    raw = amf0.encode(*values)
    assert amf0.decode(raw) == values
    assert amf0.encode(*amf0.decode(raw)) == raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x02\x00\x05ab", "truncated"),
        (b"\x42", "unknown AMF0 type marker"),
        (b"\x07\x00\x01", "references are not supported"),
        (b"\x11\x01", "AMF3"),
        (b"\x0a\xff\xff\xff\xff", "strict array count"),
        (b"\x02\x00\x02\xff\xfe", "invalid UTF-8"),
        (b"\x03\x00\x01a" * 40, "nesting deeper"),
    ],
)
def test_malformed_inputs_raise_amf_error(raw: bytes, message: str) -> None:
    with pytest.raises(amf0.AmfError, match=message):
        amf0.decode(raw)


def test_every_truncation_of_valid_data_is_a_clean_error() -> None:
    for cut in range(1, len(FFMPEG_METADATA)):
        with contextlib.suppress(amf0.AmfError):
            amf0.decode(FFMPEG_METADATA[:cut])


@given(st.binary(max_size=512))
@example(b"\x03\x00\x00\x09")
@example(b"\x08\x00\x00\x00\x00\x00\x00\x09")
@example(b"\x0b" + b"\x00" * 9)
def test_fuzz_decode_only_raises_amf_error(raw: bytes) -> None:
    with contextlib.suppress(amf0.AmfError):
        amf0.decode(raw)


amf_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.lists(amf_values, max_size=5))
def test_fuzz_encode_decode_round_trip(values: list[Any]) -> None:
    decoded = amf0.decode(amf0.encode(*values))
    assert amf0.encode(*decoded) == amf0.encode(*values)
    for a, b in zip(decoded, values, strict=True):
        if isinstance(b, float) and math.isfinite(b):
            assert a == b
