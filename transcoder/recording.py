"""Live recording: the segments a live packager cuts, kept whole in a VOD asset.

While a stream is live, every finished segment of every ladder rung (and the audio) is
also stored under the recording's asset prefix (``vod/ASSET/RENDITION/N.m4s``, a hard
link on local disk: no second copy of the bytes, and the live window may delete its own
name freely), together with a small index of segment records. When the stream ends the
origin turns the index into static VOD playlists and an MPD with the writers the live
packager uses (``load`` + ``packager.write_vod_manifests``): nothing is re-encoded.

The index is sharded (``recording/K.json`` holds ``SHARD`` segment numbers of every
rendition), so each segment rewrites one small file, however long the stream runs.
A recording stops (and keeps what it has) once it would pass its byte limit: the owner's
disk budget left when the stream was published.
"""

from __future__ import annotations

import collections
import json
import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

from meshcast.store import LocalStore, SegmentStore
from transcoder.fmp4 import TrackSpec, init_segment
from transcoder.segments import RenditionState, SegmentRecord

log = logging.getLogger(__name__)

INDEX: Final = "recording"
SHARD: Final = 100
RECORDING: Final = "recording"
COMPLETE: Final = "complete"
STOPPED: Final = "stopped"  # the byte limit was reached; what came before is kept


class RecordingError(Exception):
    """A recording (or a range of it) cannot be read back; the message says why."""


@dataclass(frozen=True, slots=True)
class RecordingTarget:
    """Where one publication is recorded; picklable (it goes to the worker process)."""

    prefix: str  # "vod/ASSET"
    limit: int  # bytes this recording may take
    # Segments the live playlists list while recording (the DVR window).
    window: int = 0


def track_json(track: TrackSpec) -> list[Any]:
    return [
        *(track.track_id, track.kind, track.timescale, track.extradata.hex()),
        *(track.width, track.height, track.sample_rate, track.channels, track.avg_bitrate),
    ]


def track_from_json(item: list[Any]) -> TrackSpec:
    tid, kind, timescale, extradata, width, height, rate, channels, bitrate = item
    return TrackSpec(
        tid, kind, timescale, bytes.fromhex(extradata), width, height, rate, channels, bitrate
    )


@dataclass
class Recorder:
    """Packager side: called with every rendition and finished segment of a live stream."""

    store: SegmentStore
    target: RecordingTarget
    segment_duration: Fraction
    live_prefix: str  # where the live packager wrote the same segment
    # Number of the first segment recorded: shards count from it (taken from the segments
    # themselves, not the packager's clock, which may be set after this is made).
    first_number: int | None = None
    recorded: int = 0  # bytes
    state: str = RECORDING
    reason: str | None = None
    _renditions: list[dict[str, Any]] = field(default_factory=list)
    _shards: dict[int, dict[str, list[list[int]]]] = field(default_factory=dict)

    def key(self, *parts: str) -> str:
        return "/".join([self.target.prefix.rstrip("/"), *parts])

    def add_rendition(self, state: RenditionState) -> None:
        self.store.put(self.key(state.name, "init.mp4"), init_segment(state.track))
        self._renditions.append(
            {
                "name": state.name,
                "codecs": state.codecs,
                "frame_rate": state.frame_rate,
                "track": track_json(state.track),
            }
        )
        self._write_tracks()

    def _write_tracks(self) -> None:
        body = {
            "segment_duration": str(self.segment_duration),
            "first_number": self.first_number,
            "renditions": self._renditions,
        }
        self.store.put(self.key(INDEX, "tracks.json"), json.dumps(body))

    def segment(self, state: RenditionState, record: SegmentRecord, data: bytes) -> None:
        if self.state != RECORDING:
            return
        if self.recorded + record.size > self.target.limit:
            self.stop(f"disk budget reached: {self.recorded} of {self.target.limit} bytes recorded")
            return
        for item in self._renditions:
            if item["name"] == state.name and not item["frame_rate"] and state.frame_rate:
                # Measured on the first segment when the bitstream does not say.
                item["frame_rate"] = state.frame_rate
                self._write_tracks()
        self._link(f"{state.name}/{record.number}.m4s", data)
        self.recorded += record.size
        if self.first_number is None:
            self.first_number = record.number
            self._write_tracks()
        shard_no = max(0, record.number - self.first_number) // SHARD
        shard = self._shards.setdefault(shard_no, {})
        shard.setdefault(state.name, []).append(
            [record.number, record.start, record.duration, record.size]
        )
        self.store.put(self.key(INDEX, f"{shard_no}.json"), json.dumps(shard))
        # Renditions cut within a segment of each other: older shards are complete.
        for old in [k for k in self._shards if k < shard_no - 1]:
            del self._shards[old]
        self._write_status()

    def _link(self, relative: str, data: bytes) -> None:
        live = self.store
        if isinstance(live, LocalStore):
            # The live packager wrote the same bytes a moment ago: share its inode.
            src = live.path(f"{self.live_prefix}/{relative}")
            dst = live.path(self.key(relative))
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
                return
            except OSError:
                pass  # deleted already, another file system: write a copy
        self.store.put(self.key(relative), data)

    def stop(self, reason: str) -> None:
        if self.state == RECORDING:
            self.state, self.reason = STOPPED, reason
            log.warning("recording %s stopped: %s", self.target.prefix, reason)
            self._write_status()

    def finish(self) -> None:
        if self.state == RECORDING:
            self.state = COMPLETE
        self._write_status()

    def _write_status(self) -> None:
        body = {"state": self.state, "reason": self.reason, "bytes": self.recorded}
        self.store.put(self.key(INDEX, "status.json"), json.dumps(body))


# ---- reading a recording back (origin side) ----------------------------------------


@dataclass(slots=True)
class Recording:
    segment_duration: Fraction
    videos: list[RenditionState]
    audio: RenditionState | None
    status: dict[str, Any]

    @property
    def renditions(self) -> list[RenditionState]:
        return [*self.videos, *([self.audio] if self.audio else [])]

    def span(self) -> tuple[float, float] | None:
        """The media time (s) every rendition covers, or None when one has nothing."""
        states = self.renditions
        if not self.videos or any(not s.segments for s in states):
            return None
        first = max(s.segments[0].start / s.track.timescale for s in states)
        end = min((s.segments[-1].start + s.segments[-1].duration) / s.track.timescale
                  for s in states)  # fmt: skip
        return (first, end) if first < end else None

    @staticmethod
    def _in(seg: SegmentRecord, start: float, end: float) -> bool:
        # By the segment's middle: audio cuts within an audio frame of the video's
        # boundaries, and the last segment of a stream may be short.
        middle = (seg.start + seg.duration / 2) / seg.timescale
        return start <= middle < end

    @property
    def duration(self) -> float:
        span = self.span()
        if span is None:
            return 0.0
        return sum(s.seconds for s in self.videos[0].segments if self._in(s, *span))

    def last(self, seconds: float) -> tuple[float, float]:
        """The media time range of the last ``seconds``, in whole segments (so it is cut at
        keyframes): the fewest final segments that reach ``seconds`` within half a
        segment. RecordingError when more than was recorded is asked for."""
        span = self.span() or (0.0, 0.0)
        total = 0.0
        reference = self.videos[0].segments if self.videos else []
        for seg in reversed([s for s in reference if self._in(s, *span)]):
            total += seg.seconds
            if total >= seconds - seg.seconds / 2:
                return seg.start / seg.timescale, span[1]
        raise RecordingError(
            f"a clip of {seconds:g} s is longer than the {total:.1f} s recorded so far"
        )

    def cut(self, start: float, end: float) -> Recording:
        """The renditions restricted to the segments whose middle is in ``[start, end)``."""

        def part(state: RenditionState) -> RenditionState:
            copy = RenditionState(
                state.name, state.track, state.codecs, state.segment_duration, 0.0,
                state.frame_rate,
            )  # fmt: skip
            copy.segments = collections.deque()
            for seg in state.segments:
                if self._in(seg, start, end):
                    copy.append(seg)
            return copy

        return Recording(
            self.segment_duration,
            [part(v) for v in self.videos],
            part(self.audio) if self.audio else None,
            self.status,
        )

    def whole(self) -> Recording:
        """Every segment of the time every rendition covers."""
        span = self.span()
        if span is None:
            raise RecordingError("nothing recorded: no segment of every rendition")
        return self.cut(*span)


def _json(store: SegmentStore, key: str) -> Any:
    raw = store.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise RecordingError(f"{key}: damaged recording index ({exc})") from None


def load(store: SegmentStore, prefix: str) -> Recording:
    """A recording's renditions and segment records, as far as they were written."""
    prefix = prefix.rstrip("/")
    tracks = _json(store, f"{prefix}/{INDEX}/tracks.json")
    if tracks is None:
        raise RecordingError("nothing recorded: the stream never produced a segment")
    try:
        segment_duration = Fraction(tracks["segment_duration"])
        items = [
            (item["name"], track_from_json(item["track"]), item["codecs"], item["frame_rate"])
            for item in tracks["renditions"]
        ]
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise RecordingError(f"{prefix}: damaged recording index (tracks: {exc})") from None
    states: dict[str, RenditionState] = {}
    for name, track, codecs, frame_rate in items:
        state = RenditionState(name, track, codecs, segment_duration, 0.0, frame_rate)
        # Unbounded: a recording is kept whole however long it ran (the live packager's
        # history is bounded, the index on disk is not).
        state.segments = collections.deque()
        states[name] = state
    shard_no = 0
    while (shard := _json(store, f"{prefix}/{INDEX}/{shard_no}.json")) is not None:
        if not isinstance(shard, dict):
            raise RecordingError(f"{prefix}: damaged recording index (shard {shard_no})")
        for name, records in shard.items():
            if (found := states.get(name)) is None:
                continue
            for record in records if isinstance(records, list) else [None]:
                if (
                    not isinstance(record, list)
                    or len(record) != 4
                    or not all(isinstance(v, int) and v >= 0 for v in record)
                ):
                    raise RecordingError(
                        f"{prefix}: damaged recording index (shard {shard_no}, {name})"
                    )
                number, start, duration, size = record
                found.append(
                    SegmentRecord(number, start, duration, size, found.track.timescale, 0.0)
                )
        shard_no += 1
    status = _json(store, f"{prefix}/{INDEX}/status.json") or {"state": RECORDING, "bytes": 0}
    videos = [s for s in states.values() if s.track.kind == "video"]
    videos.sort(key=lambda s: -s.track.width * s.track.height)
    audio = next((s for s in states.values() if s.track.kind == "audio"), None)
    return Recording(segment_duration, videos, audio, status)
