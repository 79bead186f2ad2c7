"""Per-rendition segmenting state: samples in, finished CMAF segments out (no I/O)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from fractions import Fraction

from meshcast.paths import LATEST_INIT
from transcoder.fmp4 import Sample, TrackSpec, media_segment


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    number: int
    start: int  # decode time of the first sample, track timescale
    duration: int  # track timescale
    size: int
    timescale: int
    wallclock: float  # unix time of the first sample (EXT-X-PROGRAM-DATE-TIME)

    @property
    def seconds(self) -> float:
        return self.duration / self.timescale


@dataclass(slots=True)
class _Pending:
    dts: int
    pts: int
    data: bytes
    keyframe: bool


@dataclass
class RenditionState:
    """One rendition's track and its segment history; cuts at segment boundaries.

    Boundaries are on the media timeline: a segment ends before the first eligible
    sample (a keyframe for video, any frame for audio) at or after the next multiple of
    the segment duration. The pipeline forces video keyframes by the same rule, so every
    rung cuts at the same instants and audio within one audio frame of them.
    """

    name: str
    track: TrackSpec
    codecs: str
    segment_duration: Fraction
    wallclock_start: float
    frame_rate: float = 0.0
    first_number: int = 0
    # The init segment playlists and MPDs name: a live publication's own immutable
    # init-TAG.mp4 (meshcast.paths.versioned_init); VOD assets never change, so init.mp4.
    init_name: str = LATEST_INIT
    segments: collections.deque[SegmentRecord] = field(
        default_factory=lambda: collections.deque(maxlen=100_000)
    )
    total_bytes: int = 0
    total_duration: int = 0
    peak_bps: int = 0
    _pending: list[_Pending] = field(default_factory=list)
    _slot: int = -1  # index of the segment-duration slot the open segment started in
    _next_number: int = -1
    _last_dts: int | None = None

    @property
    def average_bps(self) -> int:
        if not self.total_duration:
            return self.peak_bps
        return int(self.total_bytes * 8 * self.track.timescale / self.total_duration)

    def _slot_of(self, dts: int) -> int:
        return int(Fraction(dts, self.track.timescale) // self.segment_duration)

    def add(
        self, dts: int, pts: int, data: bytes, keyframe: bool
    ) -> tuple[SegmentRecord, bytes] | None:
        """Add a coded sample; returns a finished segment (record, bytes) when it cut one."""
        if self._last_dts is not None and dts <= self._last_dts:
            return None  # non-increasing decode time cannot be represented: drop
        eligible = keyframe or self.track.kind == "audio"
        if not self._pending and not eligible:
            return None  # a segment must start with a sync sample
        self._last_dts = dts
        finished = None
        if not self._pending:
            self._slot = self._slot_of(dts)
        elif eligible and self._slot_of(dts) > self._slot:
            finished = self._cut(dts)
            self._slot = self._slot_of(dts)
        self._pending.append(_Pending(dts, pts, data, keyframe))
        return finished

    def flush(self, end_dts: int | None = None) -> tuple[SegmentRecord, bytes] | None:
        """Close the open segment at stream end. The last sample lasts until ``end_dts``
        when the caller knows it (VOD chunks end exactly at the next chunk's first
        sample), else the mean sample duration."""
        if not self._pending:
            return None
        if end_dts is not None and end_dts > self._pending[-1].dts:
            return self._cut(end_dts)
        if len(self._pending) > 1:
            span = self._pending[-1].dts - self._pending[0].dts
            last = max(1, span // (len(self._pending) - 1))
        else:
            last = int(self.track.timescale / (self.frame_rate or 30))
        return self._cut(self._pending[-1].dts + last)

    def _cut(self, end_dts: int) -> tuple[SegmentRecord, bytes]:
        pending = self._pending
        samples = [
            Sample(p.data, nxt - p.dts, p.keyframe, p.pts - p.dts)
            for p, nxt in zip(pending, [q.dts for q in pending[1:]] + [end_dts], strict=True)
        ]
        start = pending[0].dts
        number = self.first_number if self._next_number < 0 else self._next_number
        data = media_segment(self.track.track_id, number + 1, start, samples)
        duration = end_dts - start
        record = SegmentRecord(
            number,
            start,
            duration,
            len(data),
            self.track.timescale,
            self.wallclock_start + start / self.track.timescale,
        )
        self._next_number = number + 1
        if not self.frame_rate and self.track.kind == "video" and duration > 0:
            # Unknown from the bitstream (no VUI timing): measure the first segment.
            self.frame_rate = round(len(samples) * self.track.timescale / duration, 3)
        self._pending = []
        self.append(record)
        return record, data

    def append(self, record: SegmentRecord) -> None:
        """Account a finished segment: cut here, or by a VOD chunk worker elsewhere."""
        self.segments.append(record)
        self.total_bytes += record.size
        self.total_duration += record.duration
        # A short final segment is mostly keyframe: it would overstate the peak.
        short = record.duration * 2 < self.segment_duration * self.track.timescale
        if (not short or not self.peak_bps) and record.duration > 0:
            bps = int(record.size * 8 * self.track.timescale / record.duration)
            self.peak_bps = max(self.peak_bps, bps)
