"""Writes one live stream's CMAF renditions and their HLS + DASH manifests to the store."""

from __future__ import annotations

import logging
import time
from fractions import Fraction

from meshcast.paths import LATEST_INIT, versioned_init
from meshcast.store import SegmentStore
from transcoder import dash, hls
from transcoder.fmp4 import TrackSpec, init_segment
from transcoder.recording import Recorder
from transcoder.segments import RenditionState, SegmentRecord

log = logging.getLogger(__name__)

# Segments stay on disk this many windows after they leave the playlist, so a player
# that fetched the playlist just before it slid can still get them.
GRACE_WINDOWS = 1


class StreamPackager:
    def __init__(
        self,
        store: SegmentStore,
        prefix: str,
        segment_duration: Fraction,
        window: int,
        wallclock_start: float | None = None,
    ) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.segment_duration = segment_duration
        self.window = window
        self.wallclock_start = wallclock_start if wallclock_start is not None else time.time()
        self.videos: list[RenditionState] = []  # the ladder: aligned keyframes
        self.source: RenditionState | None = None  # passthrough of the source video
        self.audio: RenditionState | None = None
        self.ended = False
        # Set by the pipeline once a stream has shown audio and no video for a while:
        # the manifests then describe the audio rendition alone.
        self.audio_only = False
        # Numbers continue across publications of a name (they follow the wall clock),
        # so a cached /live/NAME/R/N.m4s is never a segment of an earlier publication.
        self.first_number = int(self.wallclock_start / float(segment_duration))
        # Names this publication's init segments (milliseconds: unique per publication).
        self.init_tag = int(self.wallclock_start * 1000)
        # Set when this publication is recorded (transcoder/recording.py).
        self.recorder: Recorder | None = None

    def add_rendition(
        self,
        name: str,
        track: TrackSpec,
        codecs: str,
        frame_rate: float = 0.0,
        passthrough: bool = False,
    ) -> RenditionState:
        state = RenditionState(
            name,
            track,
            codecs,
            self.segment_duration,
            self.wallclock_start,
            frame_rate,
            self.first_number,
        )
        if passthrough:
            self.source = state
        elif track.kind == "video":
            self.videos.append(state)
        else:
            self.audio = state
        self._write_init(state)
        if self.recorder is not None and not passthrough:
            self.recorder.add_rendition(state)
        return state

    def _write_init(self, state: RenditionState) -> None:
        """The publication's own init (immutable, named by the playlists) and the
        contract's ``init.mp4`` (the latest one, short-lived in caches)."""
        init = init_segment(state.track)
        state.init_name = versioned_init(self.init_tag)
        self.store.put(f"{self.prefix}/{state.name}/{state.init_name}", init)
        self.store.put(f"{self.prefix}/{state.name}/{LATEST_INIT}", init)

    @property
    def renditions(self) -> list[RenditionState]:
        return [*self.videos, *(r for r in (self.source, self.audio) if r is not None)]

    def add(
        self, rendition: RenditionState, dts: int, pts: int, data: bytes, keyframe: bool
    ) -> SegmentRecord | None:
        finished = rendition.add(dts, pts, data, keyframe)
        if finished is None:
            return None
        self._publish(rendition, *finished)
        return finished[0]

    def _publish(self, rendition: RenditionState, record: SegmentRecord, data: bytes) -> None:
        self.store.put(f"{self.prefix}/{rendition.name}/{record.number}.m4s", data)
        if self.recorder is not None and rendition is not self.source:
            self.recorder.segment(rendition, record, data)
        self.store.put(
            f"{self.prefix}/{rendition.name}/index.m3u8",
            hls.media_playlist(rendition, float(self.segment_duration), self.ended, self.window),
        )
        expired = record.number - self.window * (1 + GRACE_WINDOWS)
        if expired >= self.first_number:
            self.store.delete(f"{self.prefix}/{rendition.name}/{expired}.m4s")
        self._write_manifests()

    def _write_manifests(self) -> None:
        # Players read the multivariant playlist once: write it when every rendition
        # has a measured segment, then keep BANDWIDTH current.
        if any(not r.segments for r in self.renditions):
            return
        if not self.videos:
            if self.audio_only and self.audio is not None:
                self._write_audio_only_manifests(self.audio)
            return
        variants = [*self.videos, *([self.source] if self.source else [])]
        self.store.put(f"{self.prefix}/master.m3u8", hls.master_playlist(variants, self.audio))
        self.store.put(
            f"{self.prefix}/manifest.mpd",
            dash.mpd(
                self.videos,
                self.audio,
                availability_start=self.wallclock_start,
                segment_duration=float(self.segment_duration),
                window=self.window,
                ended=self.ended,
                now=time.time(),
                passthrough=self.source,
            ),
        )

    def _write_audio_only_manifests(self, audio: RenditionState) -> None:
        self.store.put(f"{self.prefix}/master.m3u8", hls.audio_only_master(audio))
        self.store.put(
            f"{self.prefix}/manifest.mpd",
            dash.mpd(
                [],
                audio,
                availability_start=self.wallclock_start,
                segment_duration=float(self.segment_duration),
                window=self.window,
                ended=self.ended,
                now=time.time(),
            ),
        )

    def finish(self) -> None:
        """Flush open segments; playlists get #EXT-X-ENDLIST and the MPD turns static."""
        self.ended = True
        for rendition in self.renditions:
            finished = rendition.flush()
            if finished is not None:
                self._publish(rendition, *finished)
            else:
                self.store.put(
                    f"{self.prefix}/{rendition.name}/index.m3u8",
                    hls.media_playlist(rendition, float(self.segment_duration), True, self.window),
                )
        self._write_manifests()
        if self.recorder is not None:
            self.recorder.finish()


def write_vod_manifests(
    store: SegmentStore,
    prefix: str,
    videos: list[RenditionState],
    audio: RenditionState | None,
    segment_duration: float,
) -> None:
    """Static HLS (``PLAYLIST-TYPE:VOD`` + ENDLIST) and a static MPD over finished
    renditions; the same writers as live, with every segment listed."""
    prefix = prefix.rstrip("/")
    everything = max(len(r.segments) for r in [*videos, *([audio] if audio else [])])
    for rendition in [*videos, *([audio] if audio else [])]:
        store.put(
            f"{prefix}/{rendition.name}/index.m3u8",
            hls.media_playlist(rendition, segment_duration, True, everything, vod=True),
        )
    store.put(
        f"{prefix}/manifest.mpd",
        dash.mpd(
            videos,
            audio,
            availability_start=0.0,
            segment_duration=segment_duration,
            window=everything,
            ended=True,
            now=0.0,
        ),
    )
    # Last: players start from the multivariant playlist, so it appears only once every
    # file it leads to exists.
    store.put(f"{prefix}/master.m3u8", hls.master_playlist(videos, audio))
