"""DASH MPD (ISO/IEC 23009-1, live profile) over the same CMAF files as HLS:
SegmentTemplate with ``$Number$`` and a SegmentTimeline per adaptation set."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from fractions import Fraction
from xml.sax.saxutils import quoteattr

from transcoder.segments import RenditionState, SegmentRecord


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _frame_rate(fps: float) -> str:
    """DASH FrameRateType: an integer or a fraction (30000/1001), never a decimal."""
    rate = Fraction(fps).limit_denominator(1001)
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def _duration(seconds: float) -> str:
    return f"PT{seconds:.3f}S"


def _timeline(segments: Sequence[SegmentRecord]) -> str:
    """<S t d r> runs: equal consecutive durations collapse into one element."""
    out: list[str] = []
    run_start: SegmentRecord | None = None
    repeat = 0
    expected_t = None
    for seg in segments:
        if run_start is not None and seg.duration == run_start.duration and seg.start == expected_t:
            repeat += 1
        else:
            if run_start is not None:
                out.append(_s(run_start, repeat))
            run_start, repeat = seg, 0
        expected_t = seg.start + seg.duration
    if run_start is not None:
        out.append(_s(run_start, repeat))
    return "".join(out)


def _s(seg: SegmentRecord, repeat: int) -> str:
    r = f' r="{repeat}"' if repeat else ""
    return f'<S t="{seg.start}" d="{seg.duration}"{r}/>'


def _adaptation_set(
    renditions: Sequence[RenditionState], content_type: str, set_id: int, window: int, ended: bool
) -> str:
    reference = renditions[0]
    segments = list(reference.segments)[-window:]
    if not segments:
        return ""
    # A static MPD starts its period at the first listed segment.
    offset = f' presentationTimeOffset="{segments[0].start}"' if ended else ""
    mime = f"{content_type}/mp4"
    attrs = (
        f'id="{set_id}" contentType="{content_type}" '
        f'mimeType="{mime}" segmentAlignment="true" startWithSAP="1"'
    )
    if content_type == "video":
        attrs += f' maxFrameRate="{_frame_rate(max(r.frame_rate for r in renditions))}"'
    else:
        attrs += ' lang="und"'
    template = (
        f'<SegmentTemplate timescale="{reference.track.timescale}" '
        f'initialization="$RepresentationID$/{reference.init_name}" '
        'media="$RepresentationID$/$Number$.m4s" '
        f'startNumber="{segments[0].number}"{offset}>'
        f"<SegmentTimeline>{_timeline(segments)}</SegmentTimeline></SegmentTemplate>"
    )
    reps = []
    for r in sorted(renditions, key=lambda r: -r.track.width * r.track.height):
        rattrs = f'id={quoteattr(r.name)} bandwidth="{r.peak_bps}" codecs={quoteattr(r.codecs)}'
        if content_type == "video":
            rattrs += (
                f' width="{r.track.width}" height="{r.track.height}" '
                f'frameRate="{_frame_rate(r.frame_rate)}" sar="1:1"'
            )
            reps.append(f"<Representation {rattrs}/>")
        else:
            rattrs += f' audioSamplingRate="{r.track.sample_rate}"'
            reps.append(
                f"<Representation {rattrs}><AudioChannelConfiguration "
                'schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011" '
                f'value="{r.track.channels}"/></Representation>'
            )
    return f"<AdaptationSet {attrs}>{template}{''.join(reps)}</AdaptationSet>"


def mpd(
    videos: Sequence[RenditionState],
    audio: RenditionState | None,
    *,
    availability_start: float,
    segment_duration: float,
    window: int,
    ended: bool,
    now: float,
    passthrough: RenditionState | None = None,
) -> str:
    sets = [_adaptation_set(videos, "video", 0, window, ended)] if videos else []
    if audio is not None:
        sets.append(_adaptation_set([audio], "audio", 1, window, ended))
    if passthrough is not None:
        # Cut at the source's own keyframes: not aligned with the ladder, so it cannot
        # share the ladder's AdaptationSet (segmentAlignment) or its SegmentTimeline.
        sets.append(_adaptation_set([passthrough], "video", 2, window, ended))
    common = (
        'xmlns="urn:mpeg:dash:schema:mpd:2011" '
        'profiles="urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019" '
        f'minBufferTime="{_duration(segment_duration)}"'
    )
    if ended:
        reference = videos[0] if videos else audio
        total = 0.0
        if reference is not None and reference.segments:
            first, last = list(reference.segments)[-window:][0], reference.segments[-1]
            total = (last.start + last.duration - first.start) / first.timescale
        header = f'<MPD {common} type="static" mediaPresentationDuration="{_duration(total)}">'
    else:
        header = (
            f'<MPD {common} type="dynamic" availabilityStartTime="{_iso(availability_start)}" '
            f'publishTime="{_iso(now)}" minimumUpdatePeriod="{_duration(segment_duration)}" '
            f'timeShiftBufferDepth="{_duration(segment_duration * window)}" '
            f'suggestedPresentationDelay="{_duration(segment_duration * 3)}">'
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + header
        + '<Period id="0" start="PT0S">'
        + "".join(sets)
        + "</Period></MPD>\n"
    )
