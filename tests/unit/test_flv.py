"""origin.flv: RTMP audio/video message bodies built from real encoder output (PyAV) and
by hand for the Enhanced RTMP and error paths."""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcast.codecs import CodecError
from meshcast.ingest import AudioConfig, MediaKind, MediaPacket, VideoConfig
from origin import flv
from origin.flv import FlvError, parse_audio_tag, parse_video_tag

# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Sample:
    data: bytes
    dts_ms: int
    pts_ms: int
    keyframe: bool


@dataclass(frozen=True)
class EncodedVideo:
    extradata: bytes  # avcC / hvcC / av1C as FFmpeg's MP4 muxer stores it
    samples: list[Sample]


@functools.cache
def encode_video(
    codec: str, width: int, height: int, options: tuple[tuple[str, str], ...]
) -> EncodedVideo:
    """Encode a few frames into an in-memory MP4, so the records and samples are in the
    MP4 form that FLV carries too."""
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV build has no {codec} encoder")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream(codec, rate=30, options=dict(options))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(6):
            frame = av.VideoFrame(width, height, "yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buf.seek(0)
    with av.open(buf, "r") as inp:
        vstream = inp.streams.video[0]
        tb = vstream.time_base
        assert tb is not None

        def ms(ts: int | None) -> int:
            assert ts is not None
            return round(ts * tb * 1000)

        samples = [
            Sample(bytes(p), ms(p.dts), ms(p.pts), p.is_keyframe)
            for p in inp.demux(vstream)
            if p.size
        ]
        return EncodedVideo(extradata_of(vstream.codec_context), samples)


def h264_bframes() -> EncodedVideo:
    return encode_video("libx264", 640, 360, (("preset", "veryfast"), ("bf", "2")))


def h264_1080p() -> EncodedVideo:
    return encode_video("libx264", 1920, 1080, (("preset", "ultrafast"),))


def hevc() -> EncodedVideo:
    return encode_video("libx265", 320, 240, (("x265-params", "log-level=none"),))


def av1() -> EncodedVideo:
    return encode_video("libsvtav1", 320, 240, (("preset", "12"),))


@functools.cache
def audio_extradata(codec: str, sample_rate: int, layout: str) -> tuple[bytes, bytes]:
    """(extradata, first coded frame) from a real encoder."""
    ctx = av.CodecContext.create(codec, "w")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate, ctx.layout = sample_rate, layout
    ctx.format = "fltp" if codec == "aac" else "s16"
    ctx.time_base = Fraction(1, sample_rate)
    ctx.open()
    frame_size = ctx.frame_size or 960
    packets: list[bytes] = []
    pts = 0
    while not packets:
        frame = av.AudioFrame(ctx.format.name, layout, frame_size)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate, frame.pts = sample_rate, pts
        pts += frame_size
        packets += [bytes(p) for p in ctx.encode(frame)]
    return extradata_of(ctx), packets[0]


def extradata_of(ctx: av.CodecContext) -> bytes:
    assert ctx.extradata is not None
    return ctx.extradata


def si24(value: int) -> bytes:
    return value.to_bytes(3, "big", signed=True)


def legacy_avc(frame_type: int, packet_type: int, cts: int, body: bytes) -> bytes:
    return bytes([frame_type << 4 | 7, packet_type]) + si24(cts) + body


def enhanced_video(frame_type: int, packet_type: int, fourcc: bytes, body: bytes) -> bytes:
    return bytes([0x80 | frame_type << 4 | packet_type]) + fourcc + body


# --------------------------------------------------------------------------- legacy AVC


def test_legacy_avc_sequence_header() -> None:
    stream = h264_bframes()
    config = parse_video_tag(legacy_avc(1, 0, 0, stream.extradata), 0)
    assert config == VideoConfig(
        codec="h264", extradata=stream.extradata, width=640, height=360, profile="High",
        level="3.0", fps=30.0,
    )  # fmt: skip


def test_legacy_avc_sequence_header_cropped_1080p() -> None:
    stream = h264_1080p()
    config = parse_video_tag(legacy_avc(1, 0, 0, stream.extradata), 0)
    assert isinstance(config, VideoConfig)
    assert (config.width, config.height) == (1920, 1080)
    assert (config.profile, config.level) == ("Constrained Baseline", "4.0")


def test_legacy_avc_real_frames_with_reordering() -> None:
    stream = h264_bframes()
    # RTMP timestamps are unsigned; MP4 starts B-frame streams at a negative DTS.
    offset = 1000
    ctss = set()
    for sample in stream.samples:
        cts = sample.pts_ms - sample.dts_ms
        ctss.add(cts)
        frame_type = 1 if sample.keyframe else 2
        tag = legacy_avc(frame_type, 1, cts, sample.data)
        packet = parse_video_tag(tag, sample.dts_ms + offset)
        assert packet == MediaPacket(
            kind=MediaKind.VIDEO,
            data=sample.data,
            dts=sample.dts_ms + offset,
            pts=sample.pts_ms + offset,
            keyframe=sample.keyframe,
        )
    assert len(ctss) > 1  # B-frames really were reordered
    assert stream.samples[0].keyframe


@pytest.mark.parametrize("cts", [-33, -1, 0, 1, 0x7FFFFF, -0x800000])
def test_legacy_avc_composition_time_is_signed_24_bit(cts: int) -> None:
    packet = parse_video_tag(legacy_avc(2, 1, cts, b"\x00\x00\x00\x02\x41\x9a"), 5000)
    assert isinstance(packet, MediaPacket)
    assert (packet.dts, packet.pts, packet.keyframe) == (5000, 5000 + cts, False)
    assert packet.time_base == Fraction(1, 1000)


def test_legacy_avc_messages_without_media() -> None:
    assert parse_video_tag(legacy_avc(1, 2, 0, b""), 10) is None  # end of sequence
    assert parse_video_tag(b"\x57\x00", 10) is None  # command frame: start of seek
    assert parse_video_tag(b"\x52\x01", 10) is None  # command frame, any codec id
    assert parse_video_tag(legacy_avc(1, 1, 0, b""), 10) is None  # header-only frame


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty video tag"),
        (b"\x17", "truncated"),
        (b"\x17\x01\x00\x00", "truncated"),
        (b"\x22\x00\x00", r"Sorenson H\.263 \(FLV CodecID 2\).*avc1, hvc1, av01"),
        (b"\x14\x00", "On2 VP6"),
        (b"\x1c\x00\x00\x00\x00", "HEVC.*Enhanced RTMP"),
        (b"\x1f", "unknown.*CodecID 15"),
        (b"\x07\x01\x00\x00\x00", "frame type 0"),
        (legacy_avc(1, 3, 0, b""), "AVCPacketType 3"),
        (legacy_avc(1, 0, 0, b""), "invalid AVC sequence header.*truncated"),
        (legacy_avc(1, 0, 0, b"\x00\x00\x00\x01\x67\x64"), "configurationVersion"),
    ],
)
def test_legacy_video_errors(payload: bytes, message: str) -> None:
    with pytest.raises(FlvError, match=message):
        parse_video_tag(payload, 0)


def test_bad_sequence_header_keeps_codec_cause() -> None:
    with pytest.raises(FlvError) as info:
        parse_video_tag(legacy_avc(1, 0, 0, b"\x01\x64\x00"), 0)
    assert isinstance(info.value.__cause__, CodecError)


def test_avc_record_without_sps_still_names_profile() -> None:
    record = b"\x01\x64\x00\x29\xff\xe0\x00"
    config = parse_video_tag(legacy_avc(1, 0, 0, record), 0)
    assert config == VideoConfig("h264", record, None, None, "High", "4.1")


# --------------------------------------------------------------------------- enhanced


def test_enhanced_avc1() -> None:
    stream = h264_bframes()
    config = parse_video_tag(enhanced_video(1, 0, b"avc1", stream.extradata), 0)
    assert isinstance(config, VideoConfig)
    assert (config.codec, config.width, config.height) == ("h264", 640, 360)
    assert config.extradata == stream.extradata

    sample = next(s for s in stream.samples if s.pts_ms != s.dts_ms)
    cts = sample.pts_ms - sample.dts_ms
    packet = parse_video_tag(enhanced_video(2, 1, b"avc1", si24(cts) + sample.data), 2000)
    assert packet == MediaPacket(MediaKind.VIDEO, sample.data, 2000, 2000 + cts, False)


def test_enhanced_hvc1_real_record_and_frames() -> None:
    stream = hevc()
    assert stream.extradata[0] == 1  # FFmpeg wrote an hvcC, not Annex-B
    config = parse_video_tag(enhanced_video(1, 0, b"hvc1", stream.extradata), 0)
    assert config == VideoConfig(codec="hevc", extradata=stream.extradata)

    for sample in stream.samples:
        cts = sample.pts_ms - sample.dts_ms
        tag = enhanced_video(1 if sample.keyframe else 2, 1, b"hvc1", si24(cts) + sample.data)
        packet = parse_video_tag(tag, sample.dts_ms + 1000)
        assert isinstance(packet, MediaPacket)
        assert packet.data == sample.data
        assert (packet.dts, packet.pts) == (sample.dts_ms + 1000, sample.pts_ms + 1000)
        assert packet.keyframe is sample.keyframe

    # CodedFramesX: same frame without the composition time field.
    packet = parse_video_tag(enhanced_video(2, 3, b"hvc1", stream.samples[1].data), 77)
    assert packet == MediaPacket(MediaKind.VIDEO, stream.samples[1].data, 77, 77, False)


def test_enhanced_av01_real_record_and_frames() -> None:
    stream = av1()
    assert stream.extradata[0] == 0x81  # av1C marker + version
    config = parse_video_tag(enhanced_video(1, 0, b"av01", stream.extradata), 0)
    assert config == VideoConfig(codec="av1", extradata=stream.extradata)

    key = stream.samples[0]
    # AV1 CodedFrames has no composition time: the body is the temporal unit itself.
    packet = parse_video_tag(enhanced_video(1, 1, b"av01", key.data), 40)
    assert packet == MediaPacket(MediaKind.VIDEO, key.data, 40, 40, True)


@pytest.mark.parametrize(
    "payload",
    [
        enhanced_video(1, 2, b"hvc1", b""),  # SequenceEnd
        enhanced_video(1, 4, b"av01", b"\x02\x00\x0acolorInfo"),  # Metadata
        enhanced_video(5, 4, b"avc1", b"\x02"),  # Metadata in a command frame
        bytes([0x80 | 5 << 4 | 1, 0]),  # command frame: one VideoCommand byte, no FourCC
        enhanced_video(1, 1, b"av01", b""),  # header-only frame
    ],
)
def test_enhanced_video_messages_without_media(payload: bytes) -> None:
    assert parse_video_tag(payload, 0) is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (enhanced_video(1, 0, b"vp09", b"\x01\x00"), r"FourCC 'vp09'.*avc1, hvc1, av01"),
        (enhanced_video(1, 6, b"", b"\x00avc1"), r"Multitrack \(6\)"),
        (enhanced_video(1, 7, b"", b"\x00\x00\x11"), r"ModEx \(7\)"),
        (enhanced_video(5, 7, b"", b"\x00\x00\x11"), r"ModEx \(7\)"),
        (enhanced_video(1, 5, b"avc1", b""), "MPEG2TSSequenceStart"),
        (enhanced_video(1, 9, b"avc1", b""), r"unknown \(9\)"),
        (enhanced_video(1, 1, b"av0", b""), "truncated"),
        (enhanced_video(1, 1, b"hvc1", b"\x00"), "composition time"),
        (bytes([0x80 | 5 << 4]), "command frame truncated"),
        (enhanced_video(0, 1, b"avc1", b"\x00\x00\x00\x00"), "frame type 0"),
        (enhanced_video(1, 0, b"hvc1", b"\x00\x00\x00\x01\x40\x01"), "hvcC"),
        (enhanced_video(1, 0, b"av01", b"\x0a\x0b\x00\x00"), "av1C"),
        (enhanced_video(1, 0, b"av01", b""), "av1C.*0 bytes starting with nothing"),
        (enhanced_video(1, 0, b"avc1", b"\x01\x64"), "invalid AVC sequence header"),
    ],
)
def test_enhanced_video_errors(payload: bytes, message: str) -> None:
    with pytest.raises(FlvError, match=message):
        parse_video_tag(payload, 0)


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize(
    ("sample_rate", "layout", "channels"), [(48000, "stereo", 2), (44100, "mono", 1)]
)
def test_legacy_aac(sample_rate: int, layout: str, channels: int) -> None:
    asc, frame = audio_extradata("aac", sample_rate, layout)
    # The rate/size/type bits are fixed to 44 kHz/16 bit/stereo for AAC and ignored.
    config = parse_audio_tag(b"\xaf\x00" + asc, 0)
    assert config == AudioConfig("aac", asc, sample_rate, channels)
    packet = parse_audio_tag(b"\xaf\x01" + frame, 1234)
    assert packet == MediaPacket(MediaKind.AUDIO, frame, 1234, 1234, True)


def test_enhanced_mp4a() -> None:
    asc, frame = audio_extradata("aac", 48000, "stereo")
    config = parse_audio_tag(b"\x90mp4a" + asc, 0)
    assert config == AudioConfig("aac", asc, 48000, 2)
    assert parse_audio_tag(b"\x91mp4a" + frame, 20) == MediaPacket(
        MediaKind.AUDIO, frame, 20, 20, True
    )


@pytest.mark.parametrize(("layout", "channels"), [("stereo", 2), ("mono", 1)])
def test_enhanced_opus(layout: str, channels: int) -> None:
    if "libopus" not in av.codecs_available:
        pytest.skip("PyAV build has no libopus encoder")
    head, frame = audio_extradata("libopus", 48000, layout)
    assert head.startswith(b"OpusHead")
    config = parse_audio_tag(b"\x90Opus" + head, 0)
    assert config == AudioConfig("opus", head, 48000, channels)
    assert parse_audio_tag(b"\x91Opus" + frame, 60) == MediaPacket(
        MediaKind.AUDIO, frame, 60, 60, True
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"\x92mp4a",  # SequenceEnd
        b"\x94Opus\x00\x02",  # MultichannelConfig
        b"\xaf\x01",  # header-only AAC frame
        b"\x91Opus",  # header-only Opus frame
    ],
)
def test_audio_messages_without_media(payload: bytes) -> None:
    assert parse_audio_tag(payload, 0) is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty audio tag"),
        (b"\x2f\xff\xfb", r"unsupported audio codec MP3 \(FLV SoundFormat 2\); publish AAC"),
        (b"\xb6\x00", r"Speex \(FLV SoundFormat 11\)"),
        (b"\x72", "G.711 A-law"),
        (b"\xc0", r"reserved \(FLV SoundFormat 12\)"),
        (b"\xaf", "no AACPacketType"),
        (b"\xaf\x02", "AACPacketType 2"),
        (b"\xaf\x00", "invalid AAC sequence header.*truncated"),
        (b"\xaf\x00\x16\x90", "samplingFrequencyIndex 13"),
        (b"\x90fLaC\x00", r"FourCC 'fLaC'; publish AAC"),
        (b"\x90.mp3", r"FourCC '.mp3'"),
        (b"\x95\x00", r"Multitrack \(5\)"),
        (b"\x97\x00", r"ModEx \(7\)"),
        (b"\x93mp4a", r"unknown \(3\)"),
        (b"\x90mp4", "enhanced audio tag truncated"),
        (b"\x90OpusOpusHead", "OpusHead of at least 19 bytes"),
        (b"\x90Opus" + b"OpusHead\x01\x00" + bytes(9), "0 channels"),
    ],
)
def test_audio_errors(payload: bytes, message: str) -> None:
    with pytest.raises(FlvError, match=message):
        parse_audio_tag(payload, 0)


# --------------------------------------------------------------------------- robustness


def valid_video_tags() -> list[bytes]:
    stream = h264_bframes()
    return [
        legacy_avc(1, 0, 0, stream.extradata),
        legacy_avc(1, 1, 0, stream.samples[0].data),
        enhanced_video(1, 0, b"avc1", stream.extradata),
        enhanced_video(1, 0, b"hvc1", hevc().extradata[:64]),
        enhanced_video(1, 0, b"av01", av1().extradata),
        enhanced_video(2, 1, b"hvc1", si24(-20) + b"\x00\x00\x00\x02\x02\x01"),
    ]


def valid_audio_tags() -> list[bytes]:
    asc, frame = audio_extradata("aac", 48000, "stereo")
    return [b"\xaf\x00" + asc, b"\xaf\x01" + frame, b"\x90mp4a" + asc, b"\x91mp4a" + frame]


def test_every_truncation_of_valid_tags() -> None:
    # The hvcC is cut to 64 bytes above: only its first byte and length are checked.
    parsers: list[tuple[list[bytes], Callable[[bytes, int], object]]] = [
        (valid_video_tags(), parse_video_tag),
        (valid_audio_tags(), parse_audio_tag),
    ]
    for tags, parse in parsers:
        for tag in tags:
            assert parse(tag, 0) is not None
            for n in range(len(tag)):
                with contextlib.suppress(FlvError):
                    parse(tag[:n], 0)


# Headers that steer random bodies past the first checks into each code path.
VIDEO_PREFIXES = [b"", b"\x17\x00", b"\x17\x01", b"\x90avc1", b"\x90hvc1", b"\x91av01", b"\x81"]
AUDIO_PREFIXES = [b"", b"\xaf\x00", b"\xaf\x01", b"\x90mp4a", b"\x90Opus", b"\x91Opus"]


@pytest.mark.parametrize("prefix", VIDEO_PREFIXES, ids=repr)
@given(body=st.binary(max_size=64), timestamp=st.integers(0, 2**32 - 1))
def test_fuzz_video_tag(prefix: bytes, body: bytes, timestamp: int) -> None:
    with contextlib.suppress(FlvError):
        parse_video_tag(prefix + body, timestamp)


@pytest.mark.parametrize("prefix", AUDIO_PREFIXES, ids=repr)
@given(body=st.binary(max_size=64), timestamp=st.integers(0, 2**32 - 1))
def test_fuzz_audio_tag(prefix: bytes, body: bytes, timestamp: int) -> None:
    with contextlib.suppress(FlvError):
        parse_audio_tag(prefix + body, timestamp)


@given(
    data=st.binary(min_size=1, max_size=64),
    dts=st.integers(0, 2**31),
    offset=st.integers(-(2**23), 2**23 - 1),
    keyframe=st.booleans(),
)
def test_written_video_tags_parse_back(data: bytes, dts: int, offset: int, keyframe: bool) -> None:
    packet = MediaPacket(MediaKind.VIDEO, data, dts, dts + offset, keyframe)
    assert flv.parse_video_tag(flv.video_tag(packet), dts) == packet


@given(data=st.binary(min_size=1, max_size=64), ts=st.integers(0, 2**31))
def test_written_audio_tags_parse_back(data: bytes, ts: int) -> None:
    packet = MediaPacket(MediaKind.AUDIO, data, ts, ts, True)
    assert flv.parse_audio_tag(flv.audio_tag(packet), ts) == packet


def test_written_sequence_headers_parse_back() -> None:
    asc = bytes([0x12, 0x10])  # AAC-LC, 44.1 kHz, stereo
    audio = flv.parse_audio_tag(flv.audio_tag(AudioConfig("aac", asc, 44100, 2)), 0)
    assert isinstance(audio, AudioConfig) and audio.extradata == asc
    assert flv.playable_over_rtmp(None, audio) is None
    assert "VP8" in (flv.playable_over_rtmp(VideoConfig("vp8", b""), audio) or "").upper()
