"""RTMP playback of a live stream's source (what nginx-rtmp, SRS and MediaMTX offer for
restreaming and OBS media sources): a viewer is one more consumer of the stream's ingest
messages, re-framed as legacy FLV tags (onMetaData, AVC and AAC sequence headers, then
the media from the next keyframe on). No transcode: the source rendition, as published.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from fractions import Fraction
from typing import Final

from meshcast.ingest import AudioConfig, KeyframeGate, MediaKind, MediaPacket, VideoConfig
from origin import flv
from origin.registry import LiveStream
from origin.rtmp_chunk import MessageType
from origin.rtmp_protocol import RtmpServerConnection

log = logging.getLogger(__name__)

# A viewer whose socket buffer holds this much has fallen behind: video is dropped up to
# the next keyframe; at the hard limit it is disconnected (a live viewer cannot catch up).
BEHIND_BYTES: Final = 2 * 1024 * 1024
GONE_BYTES: Final = 16 * 1024 * 1024
_NO_LIVE_META: Final = frozenset({"duration", "filesize"})


class RtmpViewer:
    """PacketSink of one RTMP player. ``flush`` writes the core's output to the socket
    and returns the bytes still buffered there; ``close`` ends the connection."""

    def __init__(
        self,
        core: RtmpServerConnection,
        stream_id: int,
        stream: LiveStream,
        flush: Callable[[], int],
        close: Callable[[str], None],
        remote: str,
    ) -> None:
        self.core = core
        self.stream_id = stream_id
        self.stream = stream
        self._flush = flush
        self._close = close
        self.remote = remote
        self._gate = KeyframeGate()
        self._gate.dropping = True  # a player starts at a keyframe
        self._zero: Fraction | None = None  # media time sent as timestamp 0
        self._last = 0  # last media timestamp sent: new sequence headers go there
        self._started = stream.video_config is None  # audio-only: start at once
        self.closed = False

    def start(self) -> None:
        """Metadata and the decoder configurations first, as a publisher sent them."""
        # A live stream has no length: a publisher's duration/filesize (ffmpeg -t writes
        # them) would make players report an incomplete download.
        metadata = {k: v for k, v in self.stream.metadata.items() if k not in _NO_LIVE_META}
        if metadata:
            self.core.send_data(self.stream_id, "onMetaData", metadata)
        if self.stream.video_config is not None:
            self.on_video_config(self.stream.video_config)
        if self.stream.audio_config is not None:
            self.on_audio_config(self.stream.audio_config)
        self._flush()

    def on_video_config(self, config: VideoConfig) -> None:
        if config.codec == "h264":
            self._send(MessageType.VIDEO, self._now(), flv.video_tag(config))

    def on_audio_config(self, config: AudioConfig) -> None:
        if config.codec == "aac":
            self._send(MessageType.AUDIO, self._now(), flv.audio_tag(config))

    def on_packet(self, packet: MediaPacket) -> None:
        if self.closed:
            return
        video = packet.kind is MediaKind.VIDEO
        if video and (self.stream.video_config is None or self.stream.video_config.codec != "h264"):
            return
        if not video and (
            self.stream.audio_config is None or self.stream.audio_config.codec != "aac"
        ):
            return
        if not self._started:
            if not (video and packet.keyframe):
                return  # audio waits for the first picture, so both start together
            self._started = True
        if not self._gate.admit(packet):
            return
        if self._zero is None:
            self._zero = packet.dts * packet.time_base
        dts = _ms(packet.dts * packet.time_base - self._zero)
        pts = _ms(packet.pts * packet.time_base - self._zero)
        shifted = MediaPacket(packet.kind, packet.data, dts, pts, packet.keyframe)
        body = flv.video_tag(shifted) if video else flv.audio_tag(shifted)
        self._last = max(self._last, dts)
        buffered = self._send(MessageType.VIDEO if video else MessageType.AUDIO, dts, body)
        if buffered > GONE_BYTES:
            self._end(f"viewer {self.remote} fell {buffered} bytes behind; disconnected")
        elif buffered > BEHIND_BYTES and self._gate.lost(packet):
            log.warning(
                "rtmp play %s: viewer behind; dropping video to the next keyframe", self.remote
            )

    def on_end(self) -> None:
        self._end(f"{self.stream.name} ended")

    def _end(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.core.end_play(self.stream_id, reason)
        self._close(reason)

    def _now(self) -> int:
        return self._last

    def _send(self, type_id: MessageType, timestamp: int, body: bytes) -> int:
        if self.closed:
            return 0
        self.core.send_media(self.stream_id, type_id, max(0, timestamp), body)
        return self._flush()


def _ms(seconds: Fraction) -> int:
    return int(seconds * 1000)
