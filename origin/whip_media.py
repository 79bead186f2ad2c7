"""Depacketized WebRTC frames -> the one ingest interface (``meshcast.ingest``).

aiortc reassembles RTP into encoded frames (H.264 Annex-B access units, VP8 frames, Opus
packets) with RTP timestamps; these sans-IO adapters turn them into the same configs and
packets RTMP produces, so WHIP feeds the same WorkerSink -> LadderPipeline and the frames
are decoded exactly once, in the transcoder worker:

- H.264: the avcC record is built from the in-band SPS/PPS of the first keyframe (WebRTC
  senders repeat them before every IDR) and access units become length-prefixed MP4
  samples, so the pipeline (and the source rung) cannot tell WHIP from RTMP.
- VP8: frames are passed as they are; the size comes from the keyframe header.
- Opus: packets as they are, with a synthesized OpusHead as decoder configuration.

Frames before the first decodable keyframe are dropped: the caller asks the sender for one
(PLI) when ``waiting_for_keyframe`` is set.
"""

from __future__ import annotations

import struct
from fractions import Fraction

from meshcast import codecs
from meshcast.ingest import AudioConfig, IngestItem, MediaKind, MediaPacket, VideoConfig

RTP_VIDEO_CLOCK = Fraction(1, 90_000)
RTP_OPUS_CLOCK = Fraction(1, 48_000)
_NAL_IDR, _NAL_SPS, _NAL_PPS = 5, 7, 8
_VP8_START_CODE = b"\x9d\x01\x2a"


def opus_head(channels: int = 2, pre_skip: int = 0) -> bytes:
    """RFC 7845 identification header: what MP4/Enhanced-RTMP carry as Opus extradata."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, 48_000, 0, 0)


def vp8_keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a VP8 keyframe header (RFC 6386 9.1), None for interframes."""
    if len(frame) < 10 or frame[0] & 1 or frame[3:6] != _VP8_START_CODE:
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


class VideoAdapter:
    """Encoded video frames of one track (codec may change mid-session) -> ingest items."""

    def __init__(self) -> None:
        self.config: VideoConfig | None = None
        self.waiting_for_keyframe = True
        self.frames = 0
        self.dropped = 0

    def push(self, codec: str, frame: bytes, ts: int) -> list[IngestItem]:
        """``codec`` is the RTP encoding name, ``ts`` the frame time in 1/90000 s."""
        name = codec.lower()
        if name == "h264":
            return self._h264(frame, ts)
        if name == "vp8":
            return self._vp8(frame, ts)
        self.dropped += 1
        return []

    def _emit(
        self, config: VideoConfig | None, data: bytes, ts: int, key: bool
    ) -> list[IngestItem]:
        items: list[IngestItem] = []
        if config is not None and config != self.config:
            self.config = config
            items.append(config)
        if self.config is None or (self.waiting_for_keyframe and not key):
            self.dropped += 1
            return items
        self.waiting_for_keyframe = False
        self.frames += 1
        items.append(MediaPacket(MediaKind.VIDEO, data, ts, ts, key, RTP_VIDEO_CLOCK))
        return items

    def _h264(self, frame: bytes, ts: int) -> list[IngestItem]:
        try:
            nals = codecs.split_annexb(frame)
        except codecs.CodecError:
            self.dropped += 1
            return []
        types = {nal[0] & 0x1F for nal in nals}
        key = _NAL_IDR in types
        config = None
        if key and _NAL_SPS in types and _NAL_PPS in types:
            try:
                config = codecs.h264_video_config(codecs.avc_decoder_config_from_annexb(frame))
            except codecs.CodecError:
                config = None
        if (self.config is None or self.config.codec != "h264") and config is None:
            self.dropped += 1
            self.waiting_for_keyframe = True
            return []
        data = b"".join(len(n).to_bytes(4, "big") + n for n in nals)
        return self._emit(config, data, ts, key)

    def _vp8(self, frame: bytes, ts: int) -> list[IngestItem]:
        if not frame:
            self.dropped += 1
            return []
        size = vp8_keyframe_size(frame)
        config = None
        if size is not None:
            config = VideoConfig(codec="vp8", extradata=b"", width=size[0], height=size[1])
        if (self.config is None or self.config.codec != "vp8") and config is None:
            self.dropped += 1
            self.waiting_for_keyframe = True
            return []
        return self._emit(config, frame, ts, size is not None)


class OpusAdapter:
    """Opus packets (48 kHz RTP clock) -> ingest items; each packet decodes on its own."""

    def __init__(self, channels: int = 2) -> None:
        self.config = AudioConfig(
            codec="opus", extradata=opus_head(channels), sample_rate=48_000, channels=channels
        )
        self._sent_config = False
        self.frames = 0

    def push(self, frame: bytes, ts: int) -> list[IngestItem]:
        if not frame:
            return []
        items: list[IngestItem] = []
        if not self._sent_config:
            self._sent_config = True
            items.append(self.config)
        self.frames += 1
        items.append(MediaPacket(MediaKind.AUDIO, frame, ts, ts, True, RTP_OPUS_CLOCK))
        return items
