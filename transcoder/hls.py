"""HLS v7 playlists (RFC 8216bis) for CMAF renditions: multivariant and media."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from transcoder.segments import RenditionState, SegmentRecord


def _pdt(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def target_duration(segments: Sequence[SegmentRecord], nominal: float) -> int:
    # EXT-X-TARGETDURATION must be >= every EXTINF rounded to the nearest integer.
    longest = max((s.seconds for s in segments), default=nominal)
    return max(math.ceil(nominal), round(longest))


def media_playlist(
    rendition: RenditionState,
    nominal_duration: float,
    ended: bool,
    window: int,
    vod: bool = False,
) -> str:
    """Live: a sliding window with wall-clock times. VOD: every segment, no wall clock
    (an upload has none), ``PLAYLIST-TYPE:VOD`` so players know it never changes."""
    segments = list(rendition.segments) if vod else list(rendition.segments)[-window:]
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target_duration(segments, nominal_duration)}",
        f"#EXT-X-MEDIA-SEQUENCE:{segments[0].number if segments else 0}",
        *(["#EXT-X-PLAYLIST-TYPE:VOD"] if vod else []),
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{rendition.init_name}"',
    ]
    for seg in segments:
        if not vod:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(seg.wallclock)}")
        lines.append(f"#EXTINF:{seg.seconds:.5f},")
        lines.append(f"{seg.number}.m4s")
    if ended or vod:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _bandwidth(video: RenditionState, audio: RenditionState | None) -> tuple[int, int]:
    peak = video.peak_bps + (audio.peak_bps if audio else 0)
    average = video.average_bps + (audio.average_bps if audio else 0)
    return peak, average


def master_playlist(videos: Sequence[RenditionState], audio: RenditionState | None) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio is not None:
        lines.append(
            '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",LANGUAGE="und",'
            f'DEFAULT=YES,AUTOSELECT=YES,CHANNELS="{audio.track.channels}",'
            f'URI="{audio.name}/index.m3u8"'
        )
    for video in sorted(videos, key=lambda v: -v.track.width * v.track.height):
        peak, average = _bandwidth(video, audio)
        codecs = video.codecs + (f",{audio.codecs}" if audio else "")
        attrs = [
            f"BANDWIDTH={peak}",
            f"AVERAGE-BANDWIDTH={average}",
            f'CODECS="{codecs}"',
            f"RESOLUTION={video.track.width}x{video.track.height}",
            f"FRAME-RATE={video.frame_rate:.3f}",
        ]
        if audio is not None:
            attrs.append('AUDIO="audio"')
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
        lines.append(f"{video.name}/index.m3u8")
    return "\n".join(lines) + "\n"


def audio_only_master(audio: RenditionState) -> str:
    """A stream without video (an internet radio, a podcast feed): one audio-only variant,
    the audio rendition itself (RFC 8216bis 4.4.6.2: CODECS lists only the audio)."""
    return (
        "\n".join(
            [
                "#EXTM3U",
                "#EXT-X-VERSION:7",
                "#EXT-X-INDEPENDENT-SEGMENTS",
                f"#EXT-X-STREAM-INF:BANDWIDTH={audio.peak_bps},"
                f'AVERAGE-BANDWIDTH={audio.average_bps},CODECS="{audio.codecs}"',
                f"{audio.name}/index.m3u8",
            ]
        )
        + "\n"
    )
