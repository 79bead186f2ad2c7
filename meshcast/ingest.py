"""The one ingest interface: every publisher (RTMP, WHIP, the demo source) turns its
protocol into these messages, and every consumer (registry stats, transcoder) reads them.

Timestamps are integers in ``time_base`` units so no protocol has to round its clock
into another one's (RTMP speaks milliseconds, RTP 90 kHz / 48 kHz).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

MILLISECONDS = Fraction(1, 1000)


class MediaKind(enum.StrEnum):
    VIDEO = "video"
    AUDIO = "audio"


@dataclass(frozen=True, slots=True)
class VideoConfig:
    """Decoder configuration of a video track (from an AVC/HEVC/AV1 sequence header)."""

    codec: str  # "h264" | "hevc" | "av1" | "vp8" | "vp9"
    extradata: bytes  # avcC / hvcC / av1C record as carried in MP4
    width: int | None = None
    height: int | None = None
    profile: str | None = None
    level: str | None = None
    fps: float | None = None  # from the bitstream's timing info, when it has one


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """Decoder configuration of an audio track (e.g. AAC AudioSpecificConfig)."""

    codec: str  # "aac" | "opus" | "mp3"
    extradata: bytes
    sample_rate: int | None = None
    channels: int | None = None


@dataclass(frozen=True, slots=True)
class MediaPacket:
    """One coded access unit (a video frame or an audio frame), in MP4 sample form
    (length-prefixed NAL units for H.264/HEVC, raw AAC without ADTS)."""

    kind: MediaKind
    data: bytes
    dts: int
    pts: int
    keyframe: bool = False
    time_base: Fraction = field(default=MILLISECONDS)

    @property
    def pts_seconds(self) -> float:
        return float(self.pts * self.time_base)


class MediaSink(Protocol):
    """Receives a stream's configs and packets."""

    def on_video_config(self, config: VideoConfig) -> None: ...

    def on_audio_config(self, config: AudioConfig) -> None: ...

    def on_packet(self, packet: MediaPacket) -> None: ...


class PacketSink(MediaSink, Protocol):
    """What a consumer of a live stream implements (the transcoder, tests)."""

    def on_end(self) -> None: ...


IngestItem = VideoConfig | AudioConfig | MediaPacket


def deliver(sink: MediaSink, item: IngestItem) -> None:
    """Hand one ingest message to a sink by its kind."""
    if isinstance(item, MediaPacket):
        sink.on_packet(item)
    elif isinstance(item, VideoConfig):
        sink.on_video_config(item)
    else:
        sink.on_audio_config(item)


class KeyframeGate:
    """Drop policy of every bounded hand-off of a live stream: once a video packet is lost,
    video resumes only at the next keyframe (the next point a decoder can start from)."""

    def __init__(self) -> None:
        self.dropping = False
        self.dropped = 0

    def admit(self, packet: MediaPacket) -> bool:
        """False when ``packet`` must be dropped because video is waiting for a keyframe."""
        if packet.kind is MediaKind.VIDEO:
            if self.dropping and not packet.keyframe:
                self.dropped += 1
                return False
            self.dropping = False
        return True

    def lost(self, packet: MediaPacket) -> bool:
        """``packet`` could not be handed on; True when this starts a video drop (log it)."""
        self.dropped += 1
        if packet.kind is MediaKind.VIDEO and not self.dropping:
            self.dropping = True
            return True
        return False
