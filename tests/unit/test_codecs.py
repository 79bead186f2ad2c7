"""meshcast.codecs against real encoder output (libx264 / aac via PyAV) and against
hand-built bitstreams for the corners no encoder here produces (POC type 1, scaling
lists, explicit AAC frequencies, PCEs)."""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcast.codecs import (
    AacConfig,
    CodecError,
    h264_codec_string,
    h264_level_name,
    h264_profile_name,
    parse_aac_audio_specific_config,
    parse_avc_decoder_config,
    parse_h264_sps,
    split_length_prefixed,
)

# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class H264Stream:
    avcc: bytes  # extradata as FFmpeg's MP4 muxer stores it
    encoder_extradata: bytes  # what libx264's codec context itself reports
    packets: list[bytes]  # MP4 samples: length-prefixed NAL units
    width: int
    height: int
    ffmpeg_profile: str
    ffmpeg_level: int


def extradata_of(ctx: av.CodecContext) -> bytes:
    assert ctx.extradata is not None
    return ctx.extradata


@functools.cache
def encode_h264(
    width: int, height: int, pix_fmt: str = "yuv420p", x264_params: str = "", preset: str = ""
) -> H264Stream:
    """Encode a few black frames into an in-memory MP4 and read back what FFmpeg saw."""
    options = {"preset": preset or "ultrafast"}
    if x264_params:
        options["x264-params"] = x264_params
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(4):
            frame = av.VideoFrame(width, height, pix_fmt)
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        encoder_extradata = extradata_of(stream.codec_context)
    buf.seek(0)
    with av.open(buf, "r") as inp:
        vstream = inp.streams.video[0]
        ctx = vstream.codec_context
        assert ctx.profile is not None
        packets = [bytes(p) for p in inp.demux(vstream) if p.size]
        return H264Stream(
            avcc=extradata_of(ctx),
            encoder_extradata=encoder_extradata,
            packets=packets,
            width=ctx.width,
            height=ctx.height,
            ffmpeg_profile=ctx.profile,
            ffmpeg_level=ctx.level,
        )


@functools.cache
def aac_extradata(sample_rate: int, layout: str) -> bytes:
    ctx = av.CodecContext.create("aac", "w")
    ctx.sample_rate, ctx.layout, ctx.format = sample_rate, layout, "fltp"
    ctx.open()
    return extradata_of(ctx)


@dataclass(frozen=True)
class H264Case:
    width: int
    height: int
    pix_fmt: str = "yuv420p"
    x264_params: str = ""
    preset: str = ""
    profile: str = "High"
    level: str = "1.3"
    chroma_format_idc: int = 1
    frame_mbs_only: bool = True

    def encode(self) -> H264Stream:
        return encode_h264(self.width, self.height, self.pix_fmt, self.x264_params, self.preset)


H264_CASES = {
    # ultrafast turns off CABAC and B-frames, so x264 signals Constrained Baseline.
    "720p": H264Case(1280, 720, profile="Constrained Baseline", level="3.1"),
    # 1080 is not a multiple of 16: coded as 1088 and cropped by 8 lines.
    "1080p-cropped": H264Case(1920, 1080, profile="Constrained Baseline", level="4.0"),
    "360p-bframes": H264Case(640, 360, preset="veryfast", level="3.0"),
    "444": H264Case(320, 240, "yuv444p", profile="High 4:4:4 Predictive", chroma_format_idc=3),
    # Odd-ish sizes make x264 crop right and bottom; the crop unit depends on chroma format.
    "444-cropped": H264Case(
        322, 242, "yuv444p", profile="High 4:4:4 Predictive", chroma_format_idc=3
    ),
    "422-cropped": H264Case(322, 242, "yuv422p", profile="High 4:2:2", chroma_format_idc=2),
    "gray-cropped": H264Case(322, 242, "gray", chroma_format_idc=0),
    # Field coding: map units are macroblock pairs and crop units double vertically.
    "1080i": H264Case(
        1920, 1080, x264_params="interlaced=1", profile="Main", level="4.0", frame_mbs_only=False
    ),
}


def annexb_units(data: bytes) -> list[bytes]:
    """Split Annex-B on 3- and 4-byte start codes (test helper; no emulation concerns)."""
    units = []
    for chunk in data.split(b"\x00\x00\x01"):
        chunk = chunk.rstrip(b"\x00")
        if chunk:
            units.append(chunk)
    return units


# --------------------------------------------------------------------------- bit writer


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> BitWriter:
        assert 0 <= value < (1 << n) or (n == 0 and value == 0)
        self.bits.extend((value >> (n - 1 - i)) & 1 for i in range(n))
        return self

    def flag(self, value: bool) -> BitWriter:
        return self.u(1, int(value))

    def ue(self, value: int) -> BitWriter:
        x = value + 1
        return self.u(x.bit_length() - 1, 0).u(x.bit_length(), x)

    def se(self, value: int) -> BitWriter:
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def to_bytes(self, rbsp_trailing: bool = False) -> bytes:
        bits = self.bits + ([1] if rbsp_trailing else [])
        bits = bits + [0] * (-len(bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def add_emulation_prevention(rbsp: bytes) -> bytes:
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


@dataclass
class SpsFields:
    profile_idc: int = 100
    constraint_flags: int = 0
    level_idc: int = 31
    sps_id: int = 0
    chroma_format_idc: int = 1
    separate_colour_plane: bool = False
    bit_depth_luma_minus8: int = 0
    bit_depth_chroma_minus8: int = 0
    # One entry per list (8, or 12 for 4:4:4); None = not present. Values are the scale
    # entries to code; a 0 ends the list early (spec: "use the last scale from here on").
    scaling_lists: list[list[int] | None] | None = None
    log2_max_frame_num_minus4: int = 0
    poc_type: int = 0
    log2_max_poc_lsb_minus4: int = 2
    poc_cycle: list[int] = field(default_factory=list)
    max_num_ref_frames: int = 1
    width_mbs: int = 80
    height_map_units: int = 45
    frame_mbs_only: bool = True
    crop: tuple[int, int, int, int] | None = None
    vui: bool = True
    extended_sar: bool = False
    colour_description: bool = False
    chroma_loc: bool = False
    timing: tuple[int, int] | None = (1, 60)
    vui_tail: bool = True  # write the bitstream_restriction part after timing

    def build(self) -> bytes:
        w = BitWriter()
        w.u(8, self.profile_idc).u(8, self.constraint_flags).u(8, self.level_idc)
        w.ue(self.sps_id)
        if self.profile_idc in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
            w.ue(self.chroma_format_idc)
            if self.chroma_format_idc == 3:
                w.flag(self.separate_colour_plane)
            w.ue(self.bit_depth_luma_minus8).ue(self.bit_depth_chroma_minus8).flag(False)
            w.flag(self.scaling_lists is not None)
            if self.scaling_lists is not None:
                for scales in self.scaling_lists:
                    w.flag(scales is not None)
                    last = 8
                    for scale in scales or []:
                        w.se(((scale - last + 128) % 256) - 128)
                        if scale == 0:
                            break
                        last = scale
        w.ue(self.log2_max_frame_num_minus4).ue(self.poc_type)
        if self.poc_type == 0:
            w.ue(self.log2_max_poc_lsb_minus4)
        elif self.poc_type == 1:
            w.flag(False).se(-2).se(1).ue(len(self.poc_cycle))
            for offset in self.poc_cycle:
                w.se(offset)
        w.ue(self.max_num_ref_frames).flag(False)
        w.ue(self.width_mbs - 1).ue(self.height_map_units - 1).flag(self.frame_mbs_only)
        if not self.frame_mbs_only:
            w.flag(True)
        w.flag(True)
        w.flag(self.crop is not None)
        for value in self.crop or ():
            w.ue(value)
        w.flag(self.vui)
        if self.vui:
            w.flag(self.extended_sar)
            if self.extended_sar:
                w.u(8, 255).u(16, 64).u(16, 45)
            w.flag(True).flag(False)  # overscan info present, not appropriate
            w.flag(self.colour_description)
            if self.colour_description:
                w.u(3, 5).flag(True).flag(True).u(8, 1).u(8, 1).u(8, 1)
            w.flag(self.chroma_loc)
            if self.chroma_loc:
                w.ue(1).ue(1)
            w.flag(self.timing is not None)
            if self.timing is not None:
                w.u(32, self.timing[0]).u(32, self.timing[1]).flag(True)
            if self.vui_tail:
                w.flag(False).flag(False).flag(False).flag(False)  # no HRD, pic_struct
                w.flag(True).flag(True).ue(0).ue(1).ue(16).ue(16).ue(0).ue(1)
        return b"\x67" + add_emulation_prevention(w.to_bytes(rbsp_trailing=True))


# --------------------------------------------------------------------------- avcC / SPS


@pytest.mark.parametrize("name", H264_CASES)
def test_real_x264_avcc_and_sps(name: str) -> None:
    case = H264_CASES[name]
    stream = case.encode()
    assert (stream.width, stream.height) == (case.width, case.height)  # FFmpeg agrees

    avcc = parse_avc_decoder_config(stream.avcc)
    assert avcc.nal_length_size == 4
    assert len(avcc.sps) == 1
    assert len(avcc.pps) == 1
    sps = parse_h264_sps(avcc.sps[0])

    assert (sps.width, sps.height) == (case.width, case.height)
    assert sps.chroma_format_idc == case.chroma_format_idc
    assert sps.frame_mbs_only is case.frame_mbs_only
    assert sps.fps == pytest.approx(30.0)
    assert (sps.profile_idc, sps.constraint_flags, sps.level_idc) == (
        avcc.profile_idc,
        avcc.profile_compat,
        avcc.level_idc,
    )
    assert sps.level_idc == stream.ffmpeg_level
    name_ours = h264_profile_name(sps.profile_idc, sps.constraint_flags)
    assert name_ours == case.profile == stream.ffmpeg_profile
    assert h264_level_name(sps.level_idc, sps.profile_idc, sps.constraint_flags) == case.level
    assert (
        h264_codec_string(avcc.profile_idc, avcc.profile_compat, avcc.level_idc)
        == "avc1." + stream.avcc[1:4].hex()
    )


def test_pyav_encoder_extradata_is_annex_b_not_avcc() -> None:
    # libx264 hands out SPS/PPS with start codes; only the MP4 (or FLV) muxer turns them
    # into an avcC record. Publishers that forward the raw form must get a clear error.
    stream = encode_h264(1280, 720)
    assert stream.encoder_extradata.startswith(b"\x00\x00\x00\x01")
    with pytest.raises(CodecError, match="configurationVersion is 0"):
        parse_avc_decoder_config(stream.encoder_extradata)

    units = annexb_units(stream.encoder_extradata)
    avcc = parse_avc_decoder_config(stream.avcc)
    assert [u for u in units if u[0] & 0x1F == 7] == avcc.sps
    assert [u for u in units if u[0] & 0x1F == 8] == avcc.pps


def build_avcc(sps: list[bytes], pps: list[bytes], length_size: int = 4) -> bytes:
    first = sps[0] if sps else b"\x67\x64\x00\x1f"
    out = bytearray([1, first[1], first[2], first[3], 0xFC | (length_size - 1), 0xE0 | len(sps)])
    for unit in sps:
        out += len(unit).to_bytes(2, "big") + unit
    out.append(len(pps))
    for unit in pps:
        out += len(unit).to_bytes(2, "big") + unit
    return bytes(out)


def test_avcc_multiple_parameter_sets_and_trailing_extension() -> None:
    record = build_avcc([b"\x67\x64\x00\x1f\xaa", b"\x67\x64\x00\x1f\xbb"], [b"\x68\xee"], 2)
    # High-profile records may end with chroma/bit-depth bytes; they must be tolerated.
    parsed = parse_avc_decoder_config(record + b"\xfd\xf8\xf8\x00")
    assert parsed.sps == [b"\x67\x64\x00\x1f\xaa", b"\x67\x64\x00\x1f\xbb"]
    assert parsed.pps == [b"\x68\xee"]
    assert parsed.nal_length_size == 2
    assert (parsed.profile_idc, parsed.profile_compat, parsed.level_idc) == (100, 0, 31)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (b"", "truncated"),
        (b"\x01\x64\x00\x1f\xff\xe1", "truncated"),
        (b"\x02\x64\x00\x1f\xff\xe0\x00", "configurationVersion is 2"),
        (b"\x01\x64\x00\x1f\xfe\xe0\x00", "reserved"),
        (b"\x01\x64\x00\x1f\xff\xe1\x00\x00\x00", "SPS #0 is empty"),
        (b"\x01\x64\x00\x1f\xff\xe1\x00\x05\x67\x64", "SPS #0 truncated"),
        (b"\x01\x64\x00\x1f\xff\xe1\x00\x01\x67", "before numOfPictureParameterSets"),
        (b"\x01\x64\x00\x1f\xff\xe0\x01\x00", "length of PPS #0"),
    ],
)
def test_avcc_errors(record: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        parse_avc_decoder_config(record)


def test_synthetic_sps_defaults() -> None:
    sps = parse_h264_sps(SpsFields().build())
    assert (sps.width, sps.height, sps.fps) == (1280, 720, 30.0)
    assert (sps.profile_idc, sps.level_idc, sps.chroma_format_idc) == (100, 31, 1)


def test_sps_poc_type_1_with_cycle() -> None:
    sps = parse_h264_sps(SpsFields(poc_type=1, poc_cycle=[3, -7, 0, 255, -300]).build())
    assert (sps.width, sps.height, sps.fps) == (1280, 720, 30.0)


def test_sps_poc_type_2_and_baseline() -> None:
    sps = parse_h264_sps(SpsFields(profile_idc=66, constraint_flags=0xC0, poc_type=2).build())
    assert (sps.width, sps.height) == (1280, 720)
    assert sps.chroma_format_idc == 1  # implied for non-high profiles
    assert h264_profile_name(sps.profile_idc, sps.constraint_flags) == "Constrained Baseline"


@pytest.mark.parametrize("chroma", [1, 3])
def test_sps_scaling_lists_are_skipped(chroma: int) -> None:
    count = 12 if chroma == 3 else 8
    lists: list[list[int] | None] = [
        None if i % 3 == 1 else [(7 * i + 3 * j) % 255 + 1 for j in range(16 if i < 6 else 64)]
        for i in range(count)
    ]
    lists[2] = [16, 0]  # early end: the rest of the list repeats the last scale
    lists[0] = [0]  # "use the default matrix"
    sps = parse_h264_sps(SpsFields(chroma_format_idc=chroma, scaling_lists=lists).build())
    assert (sps.width, sps.height, sps.fps) == (1280, 720, 30.0)
    assert sps.chroma_format_idc == chroma


def test_sps_emulation_prevention_is_removed() -> None:
    # Timing values full of zero bytes force 00 00 03 sequences into the NAL.
    nal = SpsFields(timing=(0x00000001, 0x00000100)).build()
    assert b"\x00\x00\x03" in nal
    assert parse_h264_sps(nal).fps == 128.0


def test_sps_full_vui_ntsc_rate() -> None:
    fields = SpsFields(
        extended_sar=True, colour_description=True, chroma_loc=True, timing=(1001, 60000)
    )
    assert parse_h264_sps(fields.build()).fps == pytest.approx(29.97, abs=0.001)


@pytest.mark.parametrize(
    "fields",
    [SpsFields(vui=False), SpsFields(timing=None), SpsFields(timing=(0, 60))],
    ids=["no-vui", "no-timing", "zero-ticks"],
)
def test_sps_without_usable_timing_has_no_fps(fields: SpsFields) -> None:
    assert parse_h264_sps(fields.build()).fps is None


def test_sps_truncated_vui_keeps_dimensions() -> None:
    nal = SpsFields(extended_sar=True, timing=(1, 50), vui_tail=False).build()
    # Cut inside the timing info: dimensions survive, the frame rate does not.
    sps = parse_h264_sps(nal[:-4])
    assert (sps.width, sps.height, sps.fps) == (1280, 720, None)


# ChromaArrayType -> (CropUnitX, CropUnitY for frame coding), H.264 table 6-1 / 7.4.2.1.1.
CROP_UNITS = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}


@pytest.mark.parametrize("chroma", [0, 1, 2, 3])
@pytest.mark.parametrize("frame_mbs_only", [True, False])
def test_sps_crop_units(chroma: int, frame_mbs_only: bool) -> None:
    fields = SpsFields(
        chroma_format_idc=chroma,
        frame_mbs_only=frame_mbs_only,
        width_mbs=20,
        height_map_units=15 if frame_mbs_only else 8,
        crop=(1, 2, 1, 3),
    )
    sps = parse_h264_sps(fields.build())
    unit_x, unit_y = CROP_UNITS[chroma]
    unit_y *= 1 if frame_mbs_only else 2
    coded_h = 240 if frame_mbs_only else 256
    assert (sps.width, sps.height) == (320 - 3 * unit_x, coded_h - 4 * unit_y)


def test_sps_separate_colour_planes_crop_like_monochrome() -> None:
    fields = SpsFields(chroma_format_idc=3, separate_colour_plane=True, crop=(0, 5, 0, 7))
    sps = parse_h264_sps(fields.build())
    assert (sps.width, sps.height) == (1275, 713)


@pytest.mark.parametrize(
    ("nal", "message"),
    [
        (b"", "empty"),
        (b"\xe7\x64\x00\x1f", "forbidden_zero_bit"),
        (b"\x68\xee\x3c\x80", "expected 7"),
        (b"\x67\x64\x00", "truncated"),
        (b"\x67\x64\x00\x1f" + b"\x00" * 8, "longer than 32 bits"),
        (SpsFields(crop=(0, 0, 0, 360)).build(), "leaves nothing"),
        (SpsFields(chroma_format_idc=3, sps_id=32).build(), "seq_parameter_set_id"),
        (SpsFields(poc_type=3).build(), "pic_order_cnt_type"),
        (SpsFields(width_mbs=8193).build(), "pic_width_in_mbs_minus1"),
        (
            # High profile, 4:2:0, 8-bit, scaling matrix with list 0 starting delta 200.
            b"\x67"
            + BitWriter()
            .u(24, 0x64001F)
            .ue(0)
            .ue(1)
            .ue(0)
            .ue(0)
            .flag(False)
            .flag(True)
            .flag(True)
            .se(200)
            .to_bytes(rbsp_trailing=True),
            "delta_scale = 200",
        ),
    ],
)
def test_sps_errors(nal: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        parse_h264_sps(nal)


@st.composite
def sps_fields(draw: st.DrawFn) -> SpsFields:
    high = draw(st.booleans())
    chroma = draw(st.integers(0, 3)) if high else 1
    lists = None
    if high and draw(st.booleans()):
        lists = [
            draw(st.none() | st.lists(st.integers(0, 255), min_size=size, max_size=size))
            for size in [16] * 6 + [64] * (6 if chroma == 3 else 2)
        ]
    frame_mbs_only = draw(st.booleans())
    return SpsFields(
        profile_idc=draw(st.sampled_from([100, 110, 122, 244])) if high else 77,
        level_idc=draw(st.integers(0, 255)),
        sps_id=draw(st.integers(0, 31)),
        chroma_format_idc=chroma,
        separate_colour_plane=chroma == 3 and draw(st.booleans()),
        bit_depth_luma_minus8=draw(st.integers(0, 6)),
        bit_depth_chroma_minus8=draw(st.integers(0, 6)),
        scaling_lists=lists,
        log2_max_frame_num_minus4=draw(st.integers(0, 12)),
        poc_type=draw(st.integers(0, 2)),
        poc_cycle=draw(st.lists(st.integers(-(2**31) + 1, 2**31 - 1), max_size=5)),
        max_num_ref_frames=draw(st.integers(0, 16)),
        width_mbs=draw(st.integers(1, 8192)),
        height_map_units=draw(st.integers(1, 8192)),
        frame_mbs_only=frame_mbs_only,
        vui=draw(st.booleans()),
        extended_sar=draw(st.booleans()),
        colour_description=draw(st.booleans()),
        chroma_loc=draw(st.booleans()),
        timing=draw(st.none() | st.tuples(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1))),
    )


@given(sps_fields())
def test_sps_roundtrip_property(fields: SpsFields) -> None:
    sps = parse_h264_sps(fields.build())
    assert sps.width == fields.width_mbs * 16
    assert sps.height == fields.height_map_units * 16 * (1 if fields.frame_mbs_only else 2)
    assert sps.chroma_format_idc == fields.chroma_format_idc
    assert sps.level_idc == fields.level_idc
    assert sps.frame_mbs_only is fields.frame_mbs_only
    if fields.vui and fields.timing:
        assert sps.fps == fields.timing[1] / (2 * fields.timing[0])
    else:
        assert sps.fps is None


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("profile_idc", "flags", "name"),
    [
        (66, 0, "Baseline"),
        (66, 0x40, "Constrained Baseline"),
        (77, 0, "Main"),
        (88, 0, "Extended"),
        (100, 0, "High"),
        (100, 0x08, "Progressive High"),
        (100, 0x0C, "Constrained High"),
        (110, 0, "High 10"),
        (110, 0x10, "High 10 Intra"),
        (122, 0, "High 4:2:2"),
        (244, 0, "High 4:4:4 Predictive"),
        (244, 0x10, "High 4:4:4 Intra"),
        (44, 0, "CAVLC 4:4:4 Intra"),
        (128, 0, "Stereo High"),
        (7, 0, "Unknown (7)"),
    ],
)
def test_h264_profile_name(profile_idc: int, flags: int, name: str) -> None:
    assert h264_profile_name(profile_idc, flags) == name


@pytest.mark.parametrize(
    ("level_idc", "profile_idc", "flags", "name"),
    [(31, 100, 0, "3.1"), (40, 66, 0, "4.0"), (9, 100, 0, "1b"), (11, 66, 0x10, "1b"),
     (11, 100, 0x10, "1.1"), (52, 100, 0, "5.2")],
)  # fmt: skip
def test_h264_level_name(level_idc: int, profile_idc: int, flags: int, name: str) -> None:
    assert h264_level_name(level_idc, profile_idc, flags) == name


def test_h264_codec_string() -> None:
    assert h264_codec_string(100, 0, 31) == "avc1.64001f"
    assert h264_codec_string(66, 0xC0, 30) == "avc1.42c01e"
    with pytest.raises(CodecError, match="level must be one byte"):
        h264_codec_string(100, 0, 256)
    with pytest.raises(CodecError, match="profile_idc"):
        h264_codec_string(-1, 0, 31)


# --------------------------------------------------------------------------- AAC


@pytest.mark.parametrize(
    ("sample_rate", "layout", "channels"), [(48000, "stereo", 2), (44100, "mono", 1)]
)
def test_real_aac_encoder_config(sample_rate: int, layout: str, channels: int) -> None:
    asc = aac_extradata(sample_rate, layout)
    assert parse_aac_audio_specific_config(asc) == AacConfig(2, sample_rate, channels)


def asc(*fields: tuple[int, int]) -> bytes:
    w = BitWriter()
    for bits, value in fields:
        w.u(bits, value)
    return w.to_bytes()


# A 5.1 program_config_element: front C + L/R pair, back L/R pair, one LFE.
PCE_5_1 = (
    (4, 0), (2, 1), (4, 3),  # tag, object type, sampling index
    (4, 2), (4, 0), (4, 1), (2, 1), (3, 0), (4, 0),  # front, side, back, lfe, assoc, cc
    (1, 0), (1, 0), (1, 0),  # no mixdowns
    (1, 0), (4, 0), (1, 1), (4, 1),  # front: SCE, CPE
    (1, 1), (4, 2),  # back: CPE
    (4, 0),  # lfe tag
)  # fmt: skip


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (asc((5, 2), (4, 3), (4, 2)), AacConfig(2, 48000, 2)),
        (asc((5, 2), (4, 11), (4, 7)), AacConfig(2, 8000, 8)),
        (asc((5, 2), (4, 12), (4, 6)), AacConfig(2, 7350, 6)),
        # Escaped object type: 31 then 6 bits -> 32 + 10 = 42 (USAC).
        (asc((5, 31), (6, 10), (4, 4), (4, 1)), AacConfig(42, 44100, 1)),
        # Explicit 24-bit frequency.
        (asc((5, 2), (4, 15), (24, 37800), (4, 2)), AacConfig(2, 37800, 2)),
        # HE-AAC, explicit: core 24 kHz, SBR output 48 kHz, then the core's type.
        (asc((5, 5), (4, 6), (4, 2), (4, 3), (5, 2)), AacConfig(5, 48000, 2)),
        # HE-AACv2: a mono core that decodes to stereo.
        (asc((5, 29), (4, 6), (4, 1), (4, 3), (5, 2)), AacConfig(29, 48000, 2)),
        (asc((5, 2), (4, 3), (4, 0), (3, 0), *PCE_5_1), AacConfig(2, 48000, 6)),
        # channelConfiguration 0 on a non-GA type: no PCE we can read.
        (asc((5, 31), (6, 10), (4, 3), (4, 0)), AacConfig(42, 48000, None)),
    ],
)
def test_aac_hand_built(data: bytes, expected: AacConfig) -> None:
    assert parse_aac_audio_specific_config(data) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x12", "truncated"),
        (asc((5, 0), (4, 3), (4, 2)), "null"),
        (asc((5, 2), (4, 13), (4, 2)), "samplingFrequencyIndex 13"),
        (asc((5, 2), (4, 15), (24, 0), (4, 2)), "explicit samplingFrequency is 0"),
        (asc((5, 2), (4, 3), (4, 8)), "channelConfiguration 8"),
        (asc((5, 2), (4, 3), (4, 0), (3, 0), *PCE_5_1[:12]), "truncated"),
        (asc((5, 2), (4, 3), (4, 0), (3, 0), *PCE_5_1[:3], (26, 0)), "no channels"),
    ],
)
def test_aac_errors(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        parse_aac_audio_specific_config(data)


# --------------------------------------------------------------------------- framing


def test_split_real_x264_samples() -> None:
    stream = encode_h264(640, 360, preset="veryfast")
    for sample in stream.packets:
        units = split_length_prefixed(sample, 4)
        assert units
        assert all(u[0] & 0x80 == 0 and u[0] & 0x1F in (1, 5, 6) for u in units)
        assert b"".join(len(u).to_bytes(4, "big") + u for u in units) == sample
    assert any(u[0] & 0x1F == 5 for u in split_length_prefixed(stream.packets[0], 4))


@pytest.mark.parametrize("size", [1, 2, 4])
def test_split_length_sizes(size: int) -> None:
    units = [b"\x65\x01", b"\x41" * 200]
    data = b"".join(len(u).to_bytes(size, "big") + u for u in units)
    assert split_length_prefixed(data, size) == units
    assert split_length_prefixed(b"", size) == []


@pytest.mark.parametrize(
    ("data", "size", "message"),
    [
        (b"\x00\x00\x01\x65", 3, "must be 1, 2 or 4"),
        (b"\x00\x00\x00\x05\x65", 4, "truncated: length 5, 1 bytes left"),
        (b"\x00\x01\x65\x00", 2, "prefix truncated"),
        (b"\x00\x00\x01\x65", 2, "zero-length"),
    ],
)
def test_split_errors(data: bytes, size: int, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        split_length_prefixed(data, size)


# --------------------------------------------------------------------------- robustness

PARSERS: dict[str, Callable[[bytes], object]] = {
    "avcc": parse_avc_decoder_config,
    "sps": parse_h264_sps,
    "asc": parse_aac_audio_specific_config,
    "split1": lambda d: split_length_prefixed(d, 1),
    "split2": lambda d: split_length_prefixed(d, 2),
    "split4": lambda d: split_length_prefixed(d, 4),
}


@pytest.mark.parametrize("name", PARSERS)
@given(data=st.binary(max_size=64))
def test_fuzz_arbitrary_bytes(name: str, data: bytes) -> None:
    with contextlib.suppress(CodecError):
        PARSERS[name](data)


# Prefixes that get random bytes past the first checks into the deep parsing paths.
@pytest.mark.parametrize(
    "prefix", [b"\x67\x42", b"\x67\x64", b"\x67\xf4", b"\x01\x64\x00\x1f\xff\xe1"], ids=repr
)
@given(data=st.binary(max_size=48))
def test_fuzz_structured_prefixes(prefix: bytes, data: bytes) -> None:
    parser = parse_h264_sps if prefix[0] == 0x67 else parse_avc_decoder_config
    with contextlib.suppress(CodecError):
        parser(prefix + data)


def test_every_truncation_of_real_configs() -> None:
    for case in H264_CASES.values():
        stream = case.encode()
        full = parse_avc_decoder_config(stream.avcc)
        for n in range(len(stream.avcc)):
            try:
                part = parse_avc_decoder_config(stream.avcc[:n])
            except CodecError:
                continue
            # Only the optional high-profile extension at the end may be missing.
            assert (part.sps, part.pps) == (full.sps, full.pps)
        sps_nal = full.sps[0]
        whole = parse_h264_sps(sps_nal)
        for n in range(len(sps_nal)):
            try:
                sps = parse_h264_sps(sps_nal[:n])
            except CodecError:
                continue
            assert (sps.width, sps.height) == (whole.width, whole.height)
    for data in (aac_extradata(48000, "stereo"), aac_extradata(44100, "mono")):
        for n in range(2):
            with pytest.raises(CodecError):
                parse_aac_audio_specific_config(data[:n])
