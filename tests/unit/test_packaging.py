"""Segmenting rules and manifest writers, without encoders (sans-IO)."""

from __future__ import annotations

from fractions import Fraction
from xml.etree import ElementTree

import av

from meshcast.store import LocalStore
from transcoder import dash, hls
from transcoder.fmp4 import TrackSpec, init_segment
from transcoder.packager import StreamPackager
from transcoder.segments import RenditionState, SegmentRecord

AVCC = bytes.fromhex(
    "0164001fffe100196764001facd9405005bb011000000300100000030320f1831960"
) + bytes.fromhex("01000668ebe3cb22c0")
ASC = bytes.fromhex("1190")
VIDEO = TrackSpec(1, "video", 90_000, AVCC, 1280, 720)
AUDIO = TrackSpec(2, "audio", 48_000, ASC, sample_rate=48_000, channels=2)


def video_state() -> RenditionState:
    return RenditionState("720p", VIDEO, "avc1.64001f", Fraction(2), 1_700_000_000.0, 30.0, 500)


def test_video_cuts_only_at_keyframes_in_a_new_slot() -> None:
    state = video_state()
    assert state.add(3000, 3000, b"p", False) is None  # no keyframe yet: dropped
    finished = []
    for n in range(0, 130):
        dts = n * 3000
        key = n in (0, 45, 60, 120)  # 45: an extra keyframe inside slot 0 must not cut
        out = state.add(dts + 1, dts + 1, b"x" * 10, key)
        if out:
            finished.append(out[0])
    assert [s.number for s in finished] == [500, 501]
    assert [s.duration for s in finished] == [180_000, 180_000]
    assert finished[0].start == 1 and finished[1].start == 180_001
    last = state.flush()
    assert last is not None and last[0].duration == 10 * 3000


def test_audio_cuts_at_first_frame_past_the_boundary() -> None:
    state = RenditionState("audio", AUDIO, "mp4a.40.2", Fraction(2), 0.0)
    cuts = [r[0] for t in range(0, 48_000 * 5, 1024) if (r := state.add(t, t, b"a", True))]
    assert [c.start for c in cuts] == [0, 96_256]  # 94 frames of 1024 >= 96000
    assert all(c.duration == 96_256 for c in cuts)


def test_non_increasing_dts_dropped() -> None:
    state = video_state()
    state.add(0, 0, b"k", True)
    assert state.add(0, 0, b"dup", False) is None
    assert len(state._pending) == 1


def test_dash_timeline_collapses_equal_runs_and_frame_rates() -> None:
    segs = [SegmentRecord(n, n * 180_000, 180_000, 100, 90_000, 0.0) for n in range(4)]
    segs.append(SegmentRecord(4, 720_000, 90_000, 50, 90_000, 0.0))
    assert dash._timeline(segs) == '<S t="0" d="180000" r="3"/><S t="720000" d="90000"/>'
    assert dash._frame_rate(30.0) == "30"
    assert dash._frame_rate(30000 / 1001) == "30000/1001"


def test_hls_target_duration_covers_rounded_extinf() -> None:
    segs = [SegmentRecord(0, 0, int(2.6 * 90_000), 1, 90_000, 0.0)]
    assert hls.target_duration(segs, 2.0) == 3


def test_packager_writes_valid_manifests(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    packager = StreamPackager(LocalStore(root), "live/x", Fraction(2), 3, 1_700_000_000.0)
    v = packager.add_rendition("720p", VIDEO, "avc1.64001f", 30.0)
    a = packager.add_rendition("audio", AUDIO, "mp4a.40.2")
    for n in range(0, 30 * 20):
        packager.add(v, n * 3000, n * 3000, b"v" * 100, n % 60 == 0)
    for t in range(0, 48_000 * 20, 1024):
        packager.add(a, t, t, b"a" * 10, True)
    live = (root / "live/x/720p/index.m3u8").read_text()
    assert "#EXT-X-ENDLIST" not in live
    first = packager.first_number
    # 9 segments done, the window of 3 lists the last three
    assert f"#EXT-X-MEDIA-SEQUENCE:{first + 6}" in live
    assert live.count("#EXTINF:2.00000,") == 3
    mpd = ElementTree.fromstring((root / "live/x/manifest.mpd").read_text())
    assert mpd.get("type") == "dynamic"
    packager.finish()
    ended = (root / "live/x/720p/index.m3u8").read_text()
    assert ended.rstrip().endswith("#EXT-X-ENDLIST")
    mpd = ElementTree.fromstring((root / "live/x/manifest.mpd").read_text())
    assert mpd.get("type") == "static"
    master = (root / "live/x/master.m3u8").read_text()
    assert 'CODECS="avc1.64001f,mp4a.40.2"' in master and "RESOLUTION=1280x720" in master
    # segments that left the window stay for one more window (grace), then go
    assert not (root / f"live/x/720p/{first + 3}.m4s").exists()
    assert (root / f"live/x/720p/{first + 4}.m4s").exists()
    assert (root / "live/x/720p/init.mp4").read_bytes() == init_segment(VIDEO)


def test_init_segment_opens_in_libavformat(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "init.mp4"
    path.write_bytes(init_segment(AUDIO))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac"
        assert stream.codec_context.sample_rate == 48_000
