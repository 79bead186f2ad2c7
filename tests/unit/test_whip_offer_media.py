"""Sans-IO WHIP pieces: the offer check and the encoded-frame adapters, fed real encoder
output (libx264, libvpx via PyAV) and real offers (FFmpeg's whip muxer's shape)."""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcast.config import TranscodeConfig
from meshcast.ingest import AudioConfig, MediaKind, MediaPacket, VideoConfig, deliver
from meshcast.store import LocalStore
from origin.whip_media import OpusAdapter, VideoAdapter, opus_head, vp8_keyframe_size
from origin.whip_sdp import OfferError, check_offer
from transcoder.pipeline import LadderPipeline

FINGERPRINT = ":".join(["D5", "8F", "42", "52"] * 8)
# The shape FFmpeg 8.1's whip muxer sends (captured from a run, candidates-free as it is).
FFMPEG_OFFER = """v=0
o=FFmpeg 4489045141692799359 2 IN IP4 127.0.0.1
s=FFmpegPublishSession
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS
m=audio 9 UDP/TLS/RTP/SAVPF 111
c=IN IP4 0.0.0.0
a=ice-ufrag:5740fc26
a=ice-pwd:a540dc81f9b3310cad4b6def35f8e97d
a=fingerprint:sha-256 {FP}
a=setup:passive
a=mid:0
a=sendonly
a=rtcp-mux
a=rtpmap:111 opus/48000/2
m=video 9 UDP/TLS/RTP/SAVPF 106 105
c=IN IP4 0.0.0.0
a=ice-ufrag:5740fc26
a=ice-pwd:a540dc81f9b3310cad4b6def35f8e97d
a=fingerprint:sha-256 {FP}
a=setup:passive
a=mid:1
a=sendonly
a=rtcp-mux
a=rtpmap:106 H264/90000
a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42000d
a=rtpmap:105 rtx/90000
a=fmtp:105 apt=106
""".replace("{FP}", FINGERPRINT).replace("\n", "\r\n")


def test_ffmpeg_offer_accepted() -> None:
    summary = check_offer(FFMPEG_OFFER)
    assert summary.video_codecs == ("H264",)
    assert summary.audio_codecs == ("opus",)
    assert summary.has_audio


def test_lf_only_and_trailing_blank_lines_accepted() -> None:
    assert check_offer(FFMPEG_OFFER.replace("\r\n", "\n") + "\n\n").video_codecs == ("H264",)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s: "", "empty offer"),
        (lambda s: s.replace("v=0", "v=1", 1), "first line must be 'v=0'"),
        (lambda s: s.replace("a=mid:1", "mid 1"), "not a 'type=value' SDP line"),
        (lambda s: s.replace("m=video 9 UDP/TLS/RTP/SAVPF", "m=video x"), "malformed media line"),
        (lambda s: s.replace("a=rtpmap:106 H264/90000", "a=rtpmap:H264"), "malformed rtpmap"),
        (lambda s: s.replace("a=ice-pwd", "a=x-pwd"), "no ICE credentials"),
        (lambda s: s.replace("a=fingerprint", "a=x-fingerprint"), "no DTLS fingerprint"),
        (lambda s: s.split("m=video")[0], "offer has no video"),
        (lambda s: s.replace("H264/90000", "AV1/90000"), "no supported video codec"),
        (lambda s: s.replace("opus/48000/2", "PCMU/8000"), "audio must offer Opus"),
        (
            lambda s: s.replace(
                "a=sendonly\r\na=rtcp-mux\r\na=rtpmap:106",
                "a=recvonly\r\na=rtcp-mux\r\na=rtpmap:106",
            ),
            "video is recvonly",
        ),
        (lambda s: s + s[s.index("m=video") :], "more than one video"),
        (lambda s: "v=0\r\ns=-\r\n", "no media sections"),
    ],
)
def test_bad_offers_name_the_problem(mutate: object, reason: str) -> None:
    assert callable(mutate)
    with pytest.raises(OfferError, match=reason):
        check_offer(mutate(FFMPEG_OFFER))


def test_session_level_ice_and_fingerprint_count() -> None:
    lines = FFMPEG_OFFER.split("\r\n")
    session = [line for line in lines if line.startswith(("a=ice-", "a=fingerprint"))][:3]
    media = [line for line in lines if not line.startswith(("a=ice-", "a=fingerprint"))]
    moved = "\r\n".join(media[:4] + session + media[4:])
    assert check_offer(moved).video_codecs == ("H264",)


@given(st.text(max_size=300))
def test_any_text_is_accepted_or_refused_with_offer_error(text: str) -> None:
    with contextlib.suppress(OfferError):
        check_offer(text)


def encode(codec: str, frames: int, **options: str) -> list[bytes]:
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = 176, 144, "yuv420p"
    ctx.time_base = Fraction(1, 30)
    ctx.gop_size = 10
    ctx.options = options
    ctx.open()
    out = []
    for n in range(frames):
        frame = av.VideoFrame(176, 144, "yuv420p")
        frame.pts = n
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    return out


def test_h264_annexb_becomes_avcc_config_and_mp4_samples() -> None:
    aus = encode("libx264", 12, preset="ultrafast", tune="zerolatency", profile="baseline")
    adapter = VideoAdapter()
    # A receiver joining mid-GOP: frames before the keyframe are dropped.
    assert adapter.push("H264", aus[3], 0) == []
    assert adapter.waiting_for_keyframe
    items = adapter.push("H264", aus[0], 3000)
    config, packet = items
    assert isinstance(config, VideoConfig) and config.codec == "h264"
    assert (config.width, config.height, config.profile) == (176, 144, "Constrained Baseline")
    assert config.extradata[0] == 1  # an avcC record, not Annex-B
    assert isinstance(packet, MediaPacket) and packet.keyframe and packet.kind is MediaKind.VIDEO
    assert packet.time_base == Fraction(1, 90000) and packet.pts == packet.dts == 3000
    assert not packet.data.startswith(b"\x00\x00\x00\x01")
    # The pipeline's decoder gets what RTMP would give it: decode every sample.
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = config.extradata
    decoded = list(decoder.decode(av.Packet(packet.data)))
    for n, au in enumerate(aus[1:], 2):
        (item,) = adapter.push("H264", au, n * 3000)
        assert isinstance(item, MediaPacket)
        decoded += decoder.decode(av.Packet(item.data))
    decoded += decoder.decode(None)
    assert len(decoded) == len(aus) and decoded[0].width == 176
    assert adapter.frames == len(aus) and adapter.dropped == 1


def test_vp8_keyframe_size_and_packets() -> None:
    frames = encode("libvpx", 12, deadline="realtime")
    assert vp8_keyframe_size(frames[0]) == (176, 144)
    assert vp8_keyframe_size(frames[1]) is None
    adapter = VideoAdapter()
    assert adapter.push("VP8", frames[1], 0) == []
    config, packet = adapter.push("VP8", frames[0], 100)
    assert config == VideoConfig(codec="vp8", extradata=b"", width=176, height=144)
    assert isinstance(packet, MediaPacket) and packet.keyframe and packet.data == frames[0]
    (nxt,) = adapter.push("VP8", frames[1], 3100)
    assert isinstance(nxt, MediaPacket) and not nxt.keyframe
    assert adapter.push("VP9", frames[2], 6100) == [] and adapter.dropped == 2


def test_opus_packets_with_a_head_the_decoder_accepts() -> None:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "stereo", "s16"
    encoder.open()
    packets = []
    for n in range(5):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate, frame.pts = 48000, n * 960
        packets += [bytes(p) for p in encoder.encode(frame)]
    adapter = OpusAdapter()
    items = adapter.push(packets[0], 0)
    assert isinstance(items[0], AudioConfig) and items[0].extradata == opus_head(2)
    assert len(opus_head(2)) == 19 and opus_head(2).startswith(b"OpusHead")
    assert all(isinstance(i, MediaPacket) for i in adapter.push(packets[1], 960))
    decoder = av.CodecContext.create("opus", "r")
    decoder.extradata = items[0].extradata
    decoder.open()
    pcm = [f for p in packets for f in decoder.decode(av.Packet(p))]
    assert pcm and pcm[0].sample_rate == 48000 and len(pcm[0].layout.channels) == 2


def test_adapter_output_through_the_ladder_pipeline(tmp_path: Path) -> None:
    """VP8 + Opus as WHIP delivers them (both clocks starting at 0) through the real
    LadderPipeline: the VP8 decoder needs no extradata, Opus becomes AAC, and the AAC
    encoder's priming packet (before 0) does not break packaging."""
    pipeline = LadderPipeline("w", LocalStore(tmp_path), TranscodeConfig(ladder=((144, 300),)))
    video, audio = VideoAdapter(), OpusAdapter()
    vp8 = encode("libvpx", 75, deadline="realtime")  # 2.5 s at 30 fps
    opus = av.CodecContext.create("libopus", "w")
    opus.sample_rate, opus.layout, opus.format = 48000, "stereo", "s16"
    opus.open()
    samples = 0
    for n, frame in enumerate(vp8):
        for item in video.push("VP8", frame, n * 3000):
            deliver(pipeline, item)
        while samples < (n + 1) * 1600:
            pcm = av.AudioFrame(format="s16", layout="stereo", samples=960)
            for plane in pcm.planes:
                plane.update(bytes(plane.buffer_size))
            pcm.sample_rate, pcm.pts = 48000, samples
            for packet in opus.encode(pcm):
                for item in audio.push(bytes(packet), samples):
                    deliver(pipeline, item)
            samples += 960
    pipeline.on_end()
    assert pipeline.frames_in == 75 and pipeline.frames_dropped == 0
    audio_playlist = (tmp_path / "live/w/audio/index.m3u8").read_text()
    assert audio_playlist.count(".m4s") == 2 and "#EXT-X-ENDLIST" in audio_playlist
    assert (tmp_path / "live/w/144p/index.m3u8").read_text().count(".m4s") == 2
