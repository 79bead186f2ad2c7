from __future__ import annotations

import contextlib
import dataclasses
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
        (b"\x0a\xff\xff\xff\xff", "strict array of 4294967295"),
        (b"\x0a\x00\x00\x00\x09\x05", "strict array count"),
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


# ---- limits (issue 20, attack 2) -------------------------------------------------------


def amf0_attacks() -> dict[str, bytes]:
    """Attack inputs, kept as the fuzz corpus: the hypothesis tests below start from them
    (@example) and ``python -m bench.fuzz --target amf0`` mutates them."""
    return {
        # 8 MiB of NULL markers (8 million values): what stalled the origin for seconds.
        "null_flood_8mib": b"\x05" * (8 << 20),
        # Under every byte limit: the value count stops it.
        "null_flood_100kib": b"\x05" * (100 << 10),
        "deep_objects": b"\x03\x00\x01a" * 10_000,
        "deep_strict_arrays": b"\x0a\x00\x00\x00\x01" * 10_000,
        "strict_array_count_lie": b"\x0a\x7f\xff\xff\xff" + b"\x05" * 4096,
        "long_string_claim": b"\x0c\x7f\xff\xff\xff" + b"a" * 4096,
        "wide_object": b"\x03" + b"\x00\x01a\x05" * 40_000 + b"\x00\x00\x09",
        "ecma_count_lie": b"\x08\xff\xff\xff\xff" + b"\x00\x01a\x05" * 40_000 + b"\x00\x00\x09",
        "many_short_strings": b"\x02\x00\x01a" * 70_000,
    }


COMMAND = amf0.AmfLimits(max_bytes=64 * 1024, max_values=1024, max_depth=8, max_string=16384)


@pytest.mark.parametrize("name", sorted(amf0_attacks()))
@pytest.mark.parametrize("limits", [amf0.DEFAULT_LIMITS, COMMAND], ids=["default", "command"])
def test_attack_inputs_are_refused(name: str, limits: amf0.AmfLimits) -> None:
    raw = amf0_attacks()[name]
    with pytest.raises(amf0.AmfError, match=r"exceeds|more than|deeper than|count"):
        amf0.decode(raw, limits)


def test_limits_count_every_value_and_string_byte() -> None:
    limits = amf0.AmfLimits(max_bytes=1000, max_values=3, max_depth=1, max_string=4)
    assert amf0.decode(amf0.encode(1.0, "abcd", None), limits) == [1.0, "abcd", None]
    with pytest.raises(amf0.AmfError, match="more than 3 AMF0 values"):
        amf0.decode(amf0.encode(1.0, "a", None, None), limits)
    with pytest.raises(amf0.AmfError, match="more than 3 AMF0 values"):
        amf0.decode(amf0.encode([1.0, 2.0, 3.0]), limits)  # the list counts, and each item
    with pytest.raises(amf0.AmfError, match="string of 5 bytes"):
        amf0.decode(amf0.encode("abcde"), limits)
    with pytest.raises(amf0.AmfError, match="more than 3 AMF0 values"):
        amf0.decode(amf0.encode({"a": None, "b": None}), limits)  # keys count too
    with pytest.raises(amf0.AmfError, match="nesting deeper than 1"):
        amf0.decode(amf0.encode({"a": {"b": 1.0}}), dataclasses.replace(limits, max_values=99))
    with pytest.raises(amf0.AmfError, match="1001 bytes exceeds the 1000 limit"):
        amf0.decode(b"\x05" * 1001, limits)
    # Only the head of a command: what follows it is not even looked at.
    assert amf0.decode_head(amf0.encode("play", 3.0) + b"\xff" * 900, 2, limits) == ["play", 3.0]


def _shape(value: Any, depth: int = 0) -> tuple[int, int, int]:
    """(values, depth, longest string) of a decoded value."""
    if isinstance(value, str):
        return 1, depth, len(value.encode())
    items: list[Any] = []
    if isinstance(value, dict):
        items = list(value.values())
        longest = max((len(k.encode()) for k in value), default=0)
    elif isinstance(value, list):
        items = value
        longest = 0
    elif isinstance(value, amf0.TypedObject):
        items = list(value.properties.values())
        longest = len(value.class_name.encode())
    else:
        return 1, depth, 0
    count, deepest = 1, depth
    for item in items:
        n, d, s = _shape(item, depth + 1)
        count, deepest, longest = count + n, max(deepest, d), max(longest, s)
    return count, deepest, longest


small_limits = st.builds(
    amf0.AmfLimits,
    max_bytes=st.integers(0, 600),
    max_values=st.integers(1, 40),
    max_depth=st.integers(0, 4),
    max_string=st.integers(0, 40),
)


@given(st.binary(max_size=600), small_limits)
@example(b"\x05" * 600, amf0.AmfLimits(max_values=10))
@example(b"\x03\x00\x01a" * 100, amf0.AmfLimits(max_depth=3))
@example(b"\x0a\x7f\xff\xff\xff" + b"\x05" * 100, amf0.AmfLimits(max_values=20))
@example(b"\x0c\x7f\xff\xff\xff" + b"a" * 100, amf0.AmfLimits(max_string=10))
def test_fuzz_decode_stays_within_its_limits(raw: bytes, limits: amf0.AmfLimits) -> None:
    try:
        values = amf0.decode(raw, limits)
    except amf0.AmfError:
        return
    assert len(raw) <= limits.max_bytes
    shapes = [_shape(v) for v in values]
    assert sum(n for n, _, _ in shapes) <= limits.max_values
    assert all(d <= limits.max_depth and s <= limits.max_string for _, d, s in shapes)
