"""WebVTT captions as an HLS subtitle rendition and a DASH text AdaptationSet (pure text).

Timing: cue times are media time in seconds on the audio track's timeline (its tfdt /
timescale). Every WebVTT segment carries ``X-TIMESTAMP-MAP=MPEGTS:m,LOCAL:l`` with
``m == l * 90000`` (mod 2**33): LOCAL and MPEGTS name the same instant, so hls.js maps a cue
at LOCAL time t to media time t, the same clock it uses for the fMP4 segments (their
baseMediaDecodeTime). Segment N of the captions covers audio segment N.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from edge.plugins.live import PlaylistEntry

GROUP: Final = "subs"
RENDITION: Final = "captions"
_MEDIA_LINE: Final = (
    f'#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="{GROUP}",NAME="English (auto)",LANGUAGE="en",'
    f'DEFAULT=NO,AUTOSELECT=YES,FORCED=NO,URI="{RENDITION}/index.m3u8"'
)
_MPEGTS_WRAP: Final = 1 << 33


@dataclass(frozen=True, slots=True)
class Word:
    start: float
    end: float
    text: str


@dataclass(frozen=True, slots=True)
class Cue:
    start: float
    end: float
    text: str


def committed(words: Iterable[Word], lower: float, upper: float | None) -> list[Word]:
    """Words starting in [lower, upper): consecutive windows with touching bounds emit each
    word once. ``upper`` ends a window a little before its audio does, so a word cut by
    the window's end is taken from the next window, which hears it whole."""
    return [w for w in words if w.start >= lower and (upper is None or w.start < upper)]


def group_cues(words: Sequence[Word], max_gap: float = 0.8, max_words: int = 7) -> list[Cue]:
    cues: list[Cue] = []
    run: list[Word] = []

    def flush() -> None:
        if run:
            text = " ".join(w.text.strip() for w in run).strip()
            end = max(run[-1].end, run[0].start + 0.5)
            cues.append(Cue(run[0].start, end, text))
            run.clear()

    for word in words:
        if run and (word.start - run[-1].end > max_gap or len(run) >= max_words):
            flush()
        run.append(word)
    flush()
    return cues


def timestamp(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


def parse_timestamp(text: str) -> float:
    parts = text.split(":")
    seconds = float(parts[-1])
    for i, part in enumerate(reversed(parts[:-1])):
        seconds += int(part) * 60 ** (i + 1)
    return seconds


def vtt_segment(cues: Sequence[Cue], segment_start: float) -> bytes:
    local_ms = max(0, int(segment_start * 1000))
    mpegts = (local_ms * 90) % _MPEGTS_WRAP
    lines = [
        "WEBVTT",
        f"X-TIMESTAMP-MAP=MPEGTS:{mpegts},LOCAL:{timestamp(local_ms / 1000)}",
        "",
    ]
    for cue in cues:
        # "-->" would end the cue timing line early; newlines would end the cue.
        text = cue.text.replace("-->", "->").replace("\n", " ")
        lines += [f"{timestamp(cue.start)} --> {timestamp(cue.end)}", text, ""]
    return ("\n".join(lines) + "\n").encode()


_CUE_LINE: Final = re.compile(r"^(\S+) --> (\S+)")


def parse_vtt(body: str) -> tuple[float | None, list[Cue]]:
    """(LOCAL of X-TIMESTAMP-MAP, cues) of one WebVTT segment."""
    local = None
    cues: list[Cue] = []
    lines = body.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("X-TIMESTAMP-MAP="):
            for part in line.partition("=")[2].split(","):
                key, _, value = part.partition(":")
                if key == "LOCAL":
                    local = parse_timestamp(value)
        elif (match := _CUE_LINE.match(line)) is not None:
            text = lines[i + 1] if i + 1 < len(lines) else ""
            cues.append(Cue(parse_timestamp(match[1]), parse_timestamp(match[2]), text))
    return local, cues


def media_playlist(
    entries: Sequence[PlaylistEntry], ended: bool, target: int, vod: bool = False
) -> str:
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target}",
        f"#EXT-X-MEDIA-SEQUENCE:{entries[0].number if entries else 0}",
    ]
    if vod:
        lines.append("#EXT-X-PLAYLIST-TYPE:VOD")  # like the asset's own media playlists
    for entry in entries:
        if entry.program_date_time:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{entry.program_date_time}")
        lines.append(f"#EXTINF:{entry.duration:.5f},")
        lines.append(f"{entry.number}.vtt")
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def add_hls_subtitles(master: str) -> str:
    """The captions rendition in a multivariant playlist (idempotent)."""
    if "TYPE=SUBTITLES" in master:
        return master
    out: list[str] = []
    added = False
    for line in master.splitlines():
        if line.startswith("#EXT-X-STREAM-INF:") and not added:
            out.append(_MEDIA_LINE)
            added = True
        if line.startswith("#EXT-X-STREAM-INF:"):
            line += f',SUBTITLES="{GROUP}"'
        out.append(line)
    return "\n".join(out) + "\n"


_AUDIO_TEMPLATE: Final = re.compile(
    r'<AdaptationSet [^>]*contentType="audio"[^>]*>(<SegmentTemplate [^>]*>.*?</SegmentTemplate>)',
    re.S,
)


def add_dash_captions(mpd: str) -> str:
    """A WebVTT AdaptationSet on the audio track's timeline (idempotent)."""
    if 'contentType="text"' in mpd or "</Period>" not in mpd:
        return mpd
    match = _AUDIO_TEMPLATE.search(mpd)
    if match is None:
        return mpd
    template = re.sub(r' initialization="[^"]*"', "", match[1])
    template = template.replace("$Number$.m4s", "$Number$.vtt")
    text_set = (
        '<AdaptationSet id="9" contentType="text" mimeType="text/vtt" lang="en">'
        '<Role schemeIdUri="urn:mpeg:dash:role:2011" value="subtitle"/>'
        f'{template}<Representation id="{RENDITION}" bandwidth="256"/></AdaptationSet>'
    )
    head, _, tail = mpd.rpartition("</Period>")
    return f"{head}{text_set}</Period>{tail}"
