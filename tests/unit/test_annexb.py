from __future__ import annotations

import contextlib
from fractions import Fraction

import av
import pytest
from av.codec.context import Flags
from hypothesis import given
from hypothesis import strategies as st

from meshcast import codecs


def encode_annexb(width: int, height: int) -> tuple[bytes, list[bytes]]:
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, 25)
    ctx.flags |= Flags.global_header
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency"}
    ctx.open()
    packets = []
    for n in range(3):
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.pts = n
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    return bytes(ctx.extradata or b""), packets


def test_avcc_from_libx264_annexb_extradata() -> None:
    extradata, packets = encode_annexb(1280, 720)
    record = codecs.avc_decoder_config_from_annexb(extradata)
    config = codecs.parse_avc_decoder_config(record)
    assert config.nal_length_size == 4
    sps = codecs.parse_h264_sps(config.sps[0])
    assert (sps.width, sps.height) == (1280, 720)
    # a decoder given the avcC and length-prefixed samples decodes the frames
    dec = av.CodecContext.create("h264", "r")
    dec.extradata = record
    frames = []
    for raw in packets:
        sample = codecs.annexb_to_length_prefixed(raw)
        assert b"".join(codecs.split_length_prefixed(sample, 4)) == b"".join(
            codecs.split_annexb(raw)
        )
        frames += dec.decode(av.Packet(sample))
    frames += dec.decode(None)
    assert len(frames) == 3 and frames[0].width == 1280


def test_split_annexb_three_and_four_byte_start_codes() -> None:
    data = b"\x00\x00\x00\x01\x67\xaa\x00\x00\x01\x68\xbb\x00\x00\x00\x01\x65\xcc"
    assert codecs.split_annexb(data) == [b"\x67\xaa", b"\x68\xbb", b"\x65\xcc"]


def test_missing_parameter_sets_is_a_clear_error() -> None:
    with pytest.raises(codecs.CodecError, match="SPS and one PPS"):
        codecs.avc_decoder_config_from_annexb(b"\x00\x00\x01\x65\x00")
    with pytest.raises(codecs.CodecError, match="start code"):
        codecs.split_annexb(b"\x65\x00")


@given(st.binary(max_size=256))
def test_fuzz_annexb_helpers_only_raise_codec_error(raw: bytes) -> None:
    for fn in (
        codecs.split_annexb,
        codecs.annexb_to_length_prefixed,
        codecs.avc_decoder_config_from_annexb,
    ):
        with contextlib.suppress(codecs.CodecError):
            fn(raw)
