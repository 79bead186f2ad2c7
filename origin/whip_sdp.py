"""Sans-IO sanity check of a WHIP offer (RFC 9725 / RFC 8866), before any WebRTC state.

aiortc parses SDP leniently and fails late (or not at all) on offers we cannot use, so the
endpoint checks here what it needs and turns every problem into one readable 400 reason:
a session that would only fail after ICE and DTLS wastes the publisher's time.

Policy: an offer must send video (H.264 or VP8); audio is optional and, when present, must
offer Opus. Audio-only offers are refused (400): every meshcast stream has a video ladder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

VIDEO_CODECS = ("H264", "VP8")
AUDIO_CODECS = ("opus",)
_SENDING = ("sendonly", "sendrecv")


class OfferError(ValueError):
    """The offer cannot be used; the message is the reason sent to the publisher."""


@dataclass(slots=True)
class MediaSection:
    kind: str
    codecs: list[str] = field(default_factory=list)  # rtpmap encoding names, offer order
    direction: str = "sendrecv"  # RFC 8866: sendrecv when no direction attribute
    ice: bool = False
    fingerprint: bool = False
    port: int = 9


@dataclass(frozen=True, slots=True)
class OfferSummary:
    video_codecs: tuple[str, ...]  # supported ones, offer order
    audio_codecs: tuple[str, ...]
    has_audio: bool


def parse_sections(sdp: str) -> tuple[list[MediaSection], bool, bool]:
    """Media sections plus session-level (ICE credentials, fingerprint) presence."""
    lines = [line.rstrip("\r") for line in sdp.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise OfferError("empty offer")
    if lines[0] != "v=0":
        raise OfferError("not an SDP offer: the first line must be 'v=0'")
    sections: list[MediaSection] = []
    session_ufrag = session_pwd = session_fp = False
    ufrag = pwd = False
    for number, line in enumerate(lines, 1):
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise OfferError(f"line {number} is not a 'type=value' SDP line: {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                raise OfferError(f"line {number}: malformed media line {line[:60]!r}")
            sections.append(MediaSection(parts[0], port=int(parts[1].split("/")[0])))
            ufrag = pwd = False
            continue
        if kind != "a":
            continue
        name, _, arg = value.partition(":")
        current = sections[-1] if sections else None
        if name == "rtpmap" and current is not None:
            fields = arg.split()
            if len(fields) != 2 or not fields[0].isdigit():
                raise OfferError(f"line {number}: malformed rtpmap {line[:60]!r}")
            current.codecs.append(fields[1].split("/")[0])
        elif name in ("sendonly", "sendrecv", "recvonly", "inactive") and current is not None:
            current.direction = name
        elif name == "ice-ufrag":
            ufrag = True
            if current is None:
                session_ufrag = True
        elif name == "ice-pwd":
            pwd = True
            if current is None:
                session_pwd = True
        elif name == "fingerprint":
            if current is None:
                session_fp = True
            else:
                current.fingerprint = True
        if current is not None and ufrag and pwd:
            current.ice = True
    return sections, session_ufrag and session_pwd, session_fp


def check_offer(sdp: str) -> OfferSummary:
    """Raise OfferError with the reason when the offer cannot become a meshcast stream."""
    sections, session_ice, session_fp = parse_sections(sdp)
    if not sections:
        raise OfferError("offer has no media sections (m= lines)")
    for section in sections:
        if not (section.ice or session_ice):
            raise OfferError(f"{section.kind} section has no ICE credentials (ice-ufrag/ice-pwd)")
        if not (section.fingerprint or session_fp):
            raise OfferError(f"{section.kind} section has no DTLS fingerprint")
    videos = [s for s in sections if s.kind == "video" and s.port != 0]
    audios = [s for s in sections if s.kind == "audio" and s.port != 0]
    if not videos:
        raise OfferError("offer has no video: meshcast streams need video (audio-only is refused)")
    if len(videos) > 1 or len(audios) > 1:
        raise OfferError("offer has more than one video or audio track; publish one of each")
    video = videos[0]
    if video.direction not in _SENDING:
        raise OfferError(f"video is {video.direction}; a WHIP publisher must send it")
    upper = [c.upper() for c in video.codecs]
    video_codecs = tuple(c for c in upper if c in VIDEO_CODECS)
    if not video_codecs:
        offered = ", ".join(video.codecs) or "none"
        raise OfferError(
            f"no supported video codec (H264 or VP8) in the offer (offered: {offered})"
        )
    audio_codecs: tuple[str, ...] = ()
    if audios:
        audio = audios[0]
        audio_codecs = tuple(c.lower() for c in audio.codecs if c.lower() in AUDIO_CODECS)
        if audio.direction in _SENDING and not audio_codecs:
            offered = ", ".join(audio.codecs) or "none"
            raise OfferError(f"audio must offer Opus (offered: {offered})")
    return OfferSummary(video_codecs, audio_codecs, bool(audios))
