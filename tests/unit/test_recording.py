"""The recording index (transcoder/recording.py): what the live packager writes is what
the origin reads back, across shards; clip ranges in whole segments; the byte limit."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcast.store import LocalStore
from transcoder.fmp4 import TrackSpec
from transcoder.recording import (
    SHARD,
    STOPPED,
    Recorder,
    RecordingError,
    RecordingTarget,
    load,
)
from transcoder.segments import RenditionState, SegmentRecord

SEG = Fraction(2)
FIRST = 880_000_000
VIDEO = TrackSpec(1, "video", 90_000, b"\x01\x64\x00\x1f", 640, 360)
SMALL = TrackSpec(1, "video", 90_000, b"\x01\x64\x00\x1f", 426, 240)
AUDIO = TrackSpec(2, "audio", 48_000, b"\x11\x90", sample_rate=48_000, channels=2)


def record(store: LocalStore, count: int, limit: int = 1 << 40, last: float = 2.0) -> Recorder:
    recorder = Recorder(store, RecordingTarget("vod/a", limit), SEG, "live/x")
    states = [
        RenditionState("360p", VIDEO, "avc1.64001f", SEG, 0.0, 25.0, FIRST),
        RenditionState("240p", SMALL, "avc1.64001f", SEG, 0.0, 25.0, FIRST),
        RenditionState("audio", AUDIO, "mp4a.40.2", SEG, 0.0, 0.0, FIRST),
    ]
    for state in states:
        recorder.add_rendition(state)
    for i in range(count):
        seconds = last if i == count - 1 else 2.0
        for state in states:
            scale = state.track.timescale
            # Audio segments start a few samples after the video's boundary.
            start = i * 2 * scale + (37 if state is states[2] else 0)
            size = 1000 if state.track.kind == "video" else 100
            rec = SegmentRecord(FIRST + i, start, int(seconds * scale), size, scale, 0.0)
            recorder.segment(state, rec, b"x" * size)
    recorder.finish()
    return recorder


def test_index_round_trips_across_shards(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    count = SHARD * 2 + 7
    record(store, count, last=0.5)
    recording = load(store, "vod/a")
    assert [v.name for v in recording.videos] == ["360p", "240p"]
    assert recording.audio is not None and len(recording.audio.segments) == count
    assert [s.number for s in recording.videos[1].segments] == list(range(FIRST, FIRST + count))
    assert recording.duration == pytest.approx((count - 1) * 2 + 0.5)
    assert recording.status == {"state": "complete", "reason": None, "bytes": count * 2100}
    assert (tmp_path / "vod/a/360p" / f"{FIRST}.m4s").read_bytes() == b"x" * 1000
    assert (tmp_path / "vod/a/audio/init.mp4").is_file()


@settings(max_examples=30, deadline=None)
@given(count=st.integers(1, 40), seconds=st.floats(0.1, 100))
def test_last_seconds_are_whole_segments_within_one(
    tmp_path_factory: pytest.TempPathFactory, count: int, seconds: float
) -> None:
    store = LocalStore(tmp_path_factory.mktemp("r"))
    record(store, count, last=1.2)
    recording = load(store, "vod/a")
    try:
        start, end = recording.last(seconds)
    except RecordingError as exc:
        assert seconds > recording.duration + 0.6, (seconds, recording.duration)
        assert "longer than the" in str(exc)
        return
    clip = recording.cut(start, end)
    lengths = {r.name: len(r.segments) for r in clip.renditions}
    assert len(set(lengths.values())) == 1, lengths  # every rendition, same segments
    assert abs(clip.duration - seconds) <= 2.0
    assert clip.videos[0].segments[-1].number == FIRST + count - 1


def test_limit_stops_recording_and_keeps_what_it_has(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    recorder = record(store, 10, limit=5 * 2100 + 500)
    assert recorder.state == STOPPED and "disk budget" in (recorder.reason or "")
    recording = load(store, "vod/a")
    assert recording.status["state"] == STOPPED
    whole = recording.whole()
    assert {len(r.segments) for r in whole.renditions} == {5}
    assert recording.status["bytes"] <= 5 * 2100 + 500


def test_damaged_or_missing_index_is_a_clear_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(RecordingError, match="nothing recorded"):
        load(store, "vod/none")
    record(store, 3)
    store.put("vod/a/recording/0.json", b"{not json")
    with pytest.raises(RecordingError, match="damaged"):
        load(store, "vod/a")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=4),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(["360p", "x"]), c),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(shard=_JSON)
def test_any_damaged_shard_is_a_recording_error(
    tmp_path_factory: pytest.TempPathFactory, shard: object
) -> None:
    store = LocalStore(tmp_path_factory.mktemp("d"))
    record(store, 2)
    store.put("vod/a/recording/1.json", json.dumps(shard))
    try:
        recording = load(store, "vod/a")
    except RecordingError as exc:
        assert "damaged" in str(exc)
        return
    assert len(recording.videos[0].segments) >= 2  # what was valid is all there
