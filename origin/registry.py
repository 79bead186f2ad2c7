"""Registry of live streams: one publisher per name, stats, and fan-out to consumers.

A second publisher for a live name is refused (not "replaces"): a stolen or duplicated
key must not cut off the streamer who is live. A publisher whose TCP connection died is
dropped by the RTMP idle timeout, after which the name can be published again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshcast import events, paths
from meshcast.ingest import AudioConfig, MediaKind, MediaPacket, PacketSink, VideoConfig

log = logging.getLogger(__name__)


class PublishRefused(Exception):
    """The registry will not take this publication; the message says why."""


class StreamAlreadyLive(PublishRefused):
    pass


@dataclass(slots=True)
class TrackStats:
    packets: int = 0
    bytes: int = 0
    keyframes: int = 0
    first_dts: float | None = None
    last_dts: float | None = None

    def add(self, packet: MediaPacket) -> None:
        self.packets += 1
        self.bytes += len(packet.data)
        self.keyframes += packet.keyframe
        ts = float(packet.dts * packet.time_base)
        if self.first_dts is None:
            self.first_dts = ts
        self.last_dts = ts

    @property
    def duration(self) -> float:
        if self.first_dts is None or self.last_dts is None:
            return 0.0
        return self.last_dts - self.first_dts

    def rate(self) -> float | None:
        """Packets per second over the media timeline (frame rate for video)."""
        if self.packets < 2 or self.duration <= 0:
            return None
        return round((self.packets - 1) / self.duration, 3)


@dataclass(eq=False)
class LiveStream:
    name: str
    protocol: str
    remote: str
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    end_reason: str | None = None
    video_config: VideoConfig | None = None
    audio_config: AudioConfig | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    video: TrackStats = field(default_factory=TrackStats)
    audio: TrackStats = field(default_factory=TrackStats)
    sinks: list[PacketSink] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.ended_at is None

    def set_metadata(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata

    def on_video_config(self, config: VideoConfig) -> None:
        if config != self.video_config:
            log.info(
                "stream %s video: %s %sx%s profile %s level %s",
                self.name,
                config.codec,
                config.width,
                config.height,
                config.profile,
                config.level,
            )
        self.video_config = config
        for sink in self.sinks:
            sink.on_video_config(config)

    def on_audio_config(self, config: AudioConfig) -> None:
        if config != self.audio_config:
            log.info(
                "stream %s audio: %s %s Hz %s ch",
                self.name,
                config.codec,
                config.sample_rate,
                config.channels,
            )
        self.audio_config = config
        for sink in self.sinks:
            sink.on_audio_config(config)

    def on_packet(self, packet: MediaPacket) -> None:
        (self.video if packet.kind is MediaKind.VIDEO else self.audio).add(packet)
        for sink in self.sinks:
            sink.on_packet(packet)

    def to_json(self, private: bool = False) -> dict[str, Any]:
        """``private``: with the publisher's address, for its owner and admins only."""
        now = self.ended_at or time.time()
        total_bytes = self.video.bytes + self.audio.bytes
        elapsed = max(now - self.started_at, 1e-6)
        video: dict[str, Any] | None = None
        if self.video_config is not None or self.video.packets:
            vc = self.video_config
            video = {
                "codec": vc.codec if vc else None,
                "width": vc.width if vc else None,
                "height": vc.height if vc else None,
                "profile": vc.profile if vc else None,
                "level": vc.level if vc else None,
                "frames": self.video.packets,
                "keyframes": self.video.keyframes,
                "fps": self.video.rate(),
                "duration": round(self.video.duration, 3),
            }
        audio: dict[str, Any] | None = None
        if self.audio_config is not None or self.audio.packets:
            ac = self.audio_config
            audio = {
                "codec": ac.codec if ac else None,
                "sample_rate": ac.sample_rate if ac else None,
                "channels": ac.channels if ac else None,
                "frames": self.audio.packets,
            }
        doc: dict[str, Any] = {
            "name": self.name,
            "state": "live" if self.live else "ended",
            "protocol": self.protocol,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "video": video,
            "audio": audio,
            "playback": {
                "hls": paths.master_playlist(self.name),
                "dash": paths.dash_manifest(self.name),
            },
            "bytes": total_bytes,
            "bitrate_kbps": round(total_bytes * 8 / elapsed / 1000, 1),
        }
        if private:
            doc["remote"] = self.remote
        return doc


SinkFactory = Callable[[LiveStream], PacketSink | None]


class StreamRegistry:
    def __init__(self, bus: events.EventBus, ended_ttl: float = 300.0) -> None:
        self.bus = bus
        self.ended_ttl = ended_ttl
        self._live: dict[str, LiveStream] = {}
        self._ended: dict[str, LiveStream] = {}
        self._sink_factories: list[SinkFactory] = []

    def add_sink_factory(self, factory: SinkFactory) -> None:
        """Consumers (the transcoder) attach to every stream published from now on."""
        self._sink_factories.append(factory)

    def publish(self, name: str, protocol: str, remote: str) -> LiveStream:
        if name in self._live:
            current = self._live[name]
            raise StreamAlreadyLive(
                f"stream {name!r} is already live (from {current.protocol} {current.remote})"
            )
        stream = LiveStream(name, protocol, remote)
        for factory in self._sink_factories:
            try:
                sink = factory(stream)
            except PublishRefused:
                for started in stream.sinks:
                    started.on_end()
                raise
            except Exception as exc:
                log.exception("stream %s: could not start a consumer", name)
                for started in stream.sinks:
                    started.on_end()
                raise PublishRefused(f"server could not start processing {name!r}") from exc
            if sink is not None:
                stream.sinks.append(sink)
        self._live[name] = stream
        self._ended.pop(name, None)
        log.info("stream %s published via %s from %s", name, protocol, remote)
        self.bus.emit(events.StreamPublished(name, protocol, remote))
        return stream

    def end(self, stream: LiveStream, reason: str) -> None:
        if not stream.live or self._live.get(stream.name) is not stream:
            return
        stream.ended_at = time.time()
        stream.end_reason = reason
        del self._live[stream.name]
        self._ended[stream.name] = stream
        for sink in stream.sinks:
            try:
                sink.on_end()
            except Exception:
                log.exception("stream %s: a consumer failed while ending", stream.name)
        log.info(
            "stream %s ended (%s) after %.1f s, %d video frames, %d audio frames",
            stream.name,
            reason,
            stream.ended_at - stream.started_at,
            stream.video.packets,
            stream.audio.packets,
        )
        self.bus.emit(
            events.StreamEnded(stream.name, reason, stream.video.packets, stream.audio.packets)
        )

    def get(self, name: str) -> LiveStream | None:
        return self._live.get(name) or self._ended.get(name)

    def live_streams(self) -> list[LiveStream]:
        return list(self._live.values())

    def listing(self) -> list[LiveStream]:
        cutoff = time.time() - self.ended_ttl
        for name, stream in list(self._ended.items()):
            if (stream.ended_at or 0) < cutoff:
                del self._ended[name]
        return [*self._live.values(), *self._ended.values()]
