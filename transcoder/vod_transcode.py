"""VOD transcode: probe an upload, plan chunks on the segment grid, transcode chunks in
parallel, transcode audio once, make the poster and seek-bar thumbnails.

Every job function here is a pure function of picklable arguments (a source path on a
shared filesystem and frozen dataclasses) returning picklable results, with no shared
state: the origin runs them on a local process pool, and the same calls can be submitted
to a Dask cluster unchanged.

Timeline: output frame ``n`` is at ``n / fps`` seconds after the first video frame
(constant frame rate, whatever the source's timing), so a chunk knows its frames, its
segment numbers and its decode times without looking at other chunks. Segment ``k``
covers ``[k * segdur, (k + 1) * segdur)``; a chunk is a run of whole segments, so chunk
borders are segment borders, where every rung has a forced IDR anyway.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.frame import PictureType

from meshcast import codecs
from meshcast.config import ProbeLimits, TranscodeConfig
from meshcast.store import SegmentStore
from transcoder.encoders import Backend, EncoderSettings, select_backend
from transcoder.fmp4 import TrackSpec, init_segment
from transcoder.ladder import Rung, RungSpec, plan_ladder
from transcoder.packager import write_vod_manifests
from transcoder.pipeline import (
    AUDIO_RATE,
    VIDEO_TIMESCALE,
    VideoRung,
    open_aac_encoder,
    open_video_rung,
)
from transcoder.segments import RenditionState, SegmentRecord

log = logging.getLogger(__name__)

MAX_FPS = Fraction(60)
THUMB_INTERVAL = 5.0
THUMB_WIDTH = 160
SPRITE_COLUMNS = 10


class MediaError(Exception):
    """The upload cannot become an asset; the message is shown to its owner as is."""


class MediaRefused(MediaError):
    """A readable upload over a limit (ProbeLimits): refused with this reason (422)."""


@dataclass(frozen=True, slots=True)
class SourceInfo:
    width: int  # as displayed (after rotation)
    height: int
    fps: Fraction  # output frame rate (CFR)
    frames: int  # output frames
    t0: Fraction  # source time (s) of the first video frame: our zero
    keyframes: tuple[int, ...]  # source keyframe pts (video stream time base)
    time_base: Fraction
    has_audio: bool
    rotation: int  # degrees to turn the decoded picture clockwise for display
    pix_fmt: str
    codec: str

    @property
    def duration(self) -> float:
        return float(self.frames / self.fps)


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    index: int
    first_segment: int
    end_segment: int  # exclusive
    first_frame: int
    end_frame: int  # exclusive
    seek_pts: int  # the source keyframe at or before first_frame (stream time base)


@dataclass(frozen=True, slots=True)
class ChunkJob:
    source: str
    info: SourceInfo
    chunk: ChunkSpec
    rungs: tuple[Rung, ...]
    backend: str
    segment_duration: Fraction


@dataclass(frozen=True, slots=True)
class RenditionOutput:
    name: str
    track: TrackSpec
    codecs: str
    segments: tuple[tuple[SegmentRecord, bytes], ...]


@dataclass(frozen=True, slots=True)
class ChunkResult:
    index: int
    renditions: tuple[RenditionOutput, ...]


@dataclass(frozen=True, slots=True)
class AudioJob:
    source: str
    info: SourceInfo
    segment_duration: Fraction
    kbps: int


@dataclass(frozen=True, slots=True)
class Images:
    poster: bytes
    sprite: bytes
    vtt: str


def frame_pts(n: int, fps: Fraction) -> int:
    """Decode/presentation time of output frame ``n`` in the 90 kHz video timescale."""
    return round(n * VIDEO_TIMESCALE / fps)


def first_frame_of_segment(k: int, segment_duration: Fraction, fps: Fraction) -> int:
    return math.ceil(k * segment_duration * fps)


# ---- probe ------------------------------------------------------------------------


def _open(path: Path) -> Any:
    size = path.stat().st_size
    if size == 0:
        raise MediaError("empty upload: the file has no bytes")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        with path.open("rb") as f:
            head = f.read(12)
        if head[4:8] == b"ftyp":
            raise MediaError(
                "truncated or missing moov: the MP4 has no index (moov box); "
                "upload the complete file"
            ) from exc
        raise MediaError("not a media file: no known container format") from exc


def _codec(stream: Any) -> str:
    codec = stream.codec_context.codec
    return str(getattr(codec, "canonical_name", None) or codec.name)


def _output_fps(video: Any) -> Fraction:
    # The stream's base rate (FFmpeg's r_frame_rate) is the nominal rate of a
    # variable-frame-rate file (its average would be a fraction of it); some
    # containers report a time base there, so above 60 fall back to the average.
    rate = video.base_rate
    if not rate or rate > MAX_FPS:
        rate = video.average_rate or video.guessed_rate or Fraction(30)
    return min(Fraction(rate).limit_denominator(1001), MAX_FPS)


def _check_size(width: int, height: int, fps: Fraction, limits: ProbeLimits) -> None:
    if width > limits.max_width or height > limits.max_height:
        raise MediaRefused(
            f"video {width}x{height} is larger than the {limits.max_width}x"
            f"{limits.max_height} limit"
        )
    if width * height > limits.max_frame_pixels:
        raise MediaRefused(
            f"video {width}x{height} has more than {limits.max_frame_pixels} pixels per frame"
        )
    rate = width * height * fps
    if rate > limits.max_pixel_rate:
        raise MediaRefused(
            f"video {width}x{height} at {float(fps):.3g} fps is {float(rate) / 1e6:.0f} Mpixel/s,"
            f" above the {limits.max_pixel_rate / 1e6:.0f} Mpixel/s limit"
        )


def _check_header(container: Any, limits: ProbeLimits) -> None:
    """Limits that the container headers tell: codecs, declared size and duration."""
    if not container.streams.video:
        if container.streams.audio:
            raise MediaError("no video stream: audio-only uploads are not supported")
        raise MediaError("not a media file: no audio or video stream")
    video = container.streams.video[0]
    codec = _codec(video)
    if codec not in limits.video_codecs:
        raise MediaRefused(
            f"video codec {codec!r} is not accepted (accepted: "
            f"{', '.join(sorted(limits.video_codecs))})"
        )
    for audio in container.streams.audio:
        name = _codec(audio)
        if name not in limits.audio_codecs:
            raise MediaRefused(
                f"audio codec {name!r} is not accepted (accepted: "
                f"{', '.join(sorted(limits.audio_codecs))})"
            )
    width, height = video.codec_context.width, video.codec_context.height
    if width and height:
        _check_size(width, height, _output_fps(video), limits)
    if container.duration is not None:
        declared = container.duration / 1_000_000
        if declared > limits.max_duration:
            raise MediaRefused(
                f"the file declares {declared:.0f} s, above the {limits.max_duration:g} s limit"
            )


def probe(path: Path, limits: ProbeLimits | None = None) -> SourceInfo:
    """Streams, frame rate, first/last frame and keyframes: a demux-only scan (one frame
    is decoded, to learn the pixel format and rotation and to prove it decodes), within
    ``limits`` (MediaRefused names the one exceeded)."""
    limits = limits or ProbeLimits()
    container = _open(path)
    with container:
        _check_header(container, limits)
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        time_base = video.time_base or Fraction(1, 90_000)
        fps = _output_fps(video)
        first: int | None = None
        last: int | None = None
        keyframes: list[int] = []
        decoded: Any = None
        decode_error: str | None = None
        packets = 0
        try:
            for packet in container.demux(video):
                if packet.pts is None:
                    continue
                packets += 1
                first = packet.pts if first is None else min(first, packet.pts)
                last = packet.pts if last is None else max(last, packet.pts)
                if packet.is_keyframe:
                    keyframes.append(packet.pts)
                if decoded is None and decode_error is None:
                    try:
                        frames = packet.decode()
                    except av.error.FFmpegError as exc:
                        decode_error = str(exc)
                        continue
                    decoded = frames[0] if frames else None
        except av.error.FFmpegError as exc:
            # A file cut short in its media data: transcode what is there.
            log.warning("%s: demux stopped early: %s", path, exc)
        if first is None or last is None:
            raise MediaError("no decodable video: the video stream has no frames")
        if decoded is None:
            try:
                decoded = next(iter(video.codec_context.decode(None)), None)
            except av.error.FFmpegError:
                decoded = None
        if decoded is None:
            reason = f": {decode_error}" if decode_error else ""
            raise MediaError(f"cannot decode the video stream ({video.codec_context.name}){reason}")
        rotation = round(-float(decoded.rotation)) % 360 if decoded.rotation else 0
        if rotation % 90:
            rotation = 0  # only right angles are applied; anything else plays unrotated
        width, height = decoded.width, decoded.height
        if rotation in (90, 270):
            width, height = height, width
        if width < 16 or height < 16:
            raise MediaError(f"video too small: {width}x{height} (at least 16x16)")
        _check_size(width, height, fps, limits)
        frames_count = round((last - first) * time_base * fps) + 1
        span = float((last - first) * time_base)
        if span > limits.max_duration:
            raise MediaRefused(
                f"the video's timestamps span {span:.0f} s, above the "
                f"{limits.max_duration:g} s limit"
            )
        # Declared (timestamps) against actual (frames in the file): one second of frames
        # is always allowed, beyond that at most max_duplication output frames per frame.
        if frames_count > max(float(fps), packets * limits.max_duplication):
            raise MediaRefused(
                f"the video's timestamps span {span:.1f} s but it has only {packets} frames "
                f"(one every {span / max(packets - 1, 1):.1f} s): refusing to make "
                f"{frames_count} frames out of them"
            )
        has_audio = bool(container.streams.audio)
        keyframes = sorted(set(keyframes)) or [first]
        return SourceInfo(
            width=width,
            height=height,
            fps=fps,
            frames=frames_count,
            t0=Fraction(first) * time_base,
            keyframes=tuple(keyframes),
            time_base=Fraction(time_base),
            has_audio=has_audio,
            rotation=rotation,
            pix_fmt=str(decoded.format.name),
            codec=str(video.codec_context.name),
        )


# ---- planning ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    info: SourceInfo
    backend: str
    rungs: tuple[Rung, ...]


def prepare(path: Path, limits: ProbeLimits, config: TranscodeConfig) -> Prepared:
    """A job's first task: probe within the limits, then pick the ladder and the encoder
    backend that opens for it."""
    info = probe(path, limits)
    backend, rungs = plan_rungs(info, config)
    return Prepared(info, backend, rungs)


def plan_rungs(info: SourceInfo, config: TranscodeConfig) -> tuple[str, tuple[Rung, ...]]:
    """The ladder for this source (never above it; odd sizes scale to even) and the
    encoder backend that opens for it."""
    specs = [RungSpec(h, kbps) for h, kbps in config.ladder]
    rungs = plan_ladder(info.width, info.height, specs)
    backend = select_backend(config.encoder, rungs[0], EncoderSettings(fps=info.fps))
    return backend.value, tuple(rungs)


def plan_chunks(
    info: SourceInfo, segment_duration: Fraction, segments_per_chunk: int
) -> list[ChunkSpec]:
    """Runs of whole segments; each chunk seeks to the source keyframe at or before its
    first frame, so it decodes from a clean point without reading earlier chunks."""
    segments = math.ceil(Fraction(info.frames) / info.fps / segment_duration)
    chunks = []
    for index, first_segment in enumerate(range(0, segments, segments_per_chunk)):
        end_segment = min(segments, first_segment + segments_per_chunk)
        first_frame = first_frame_of_segment(first_segment, segment_duration, info.fps)
        end_frame = min(
            info.frames, first_frame_of_segment(end_segment, segment_duration, info.fps)
        )
        start_pts = (info.t0 + Fraction(first_frame) / info.fps) / info.time_base
        seek = [k for k in info.keyframes if k <= start_pts]
        chunks.append(
            ChunkSpec(
                index,
                first_segment,
                end_segment,
                first_frame,
                end_frame,
                seek[-1] if seek else info.keyframes[0],
            )
        )
    return chunks


# ---- chunk worker -----------------------------------------------------------------


def _rotate(frame: Any, rotation: int) -> Any:
    if not rotation:
        return frame
    # np.rot90 turns counter-clockwise; we turn clockwise by `rotation`.
    picture = np.rot90(frame.to_ndarray(format="rgb24"), k=-(rotation // 90))
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")


def _source_frames(job_source: str, info: SourceInfo, seek_pts: int) -> Any:
    """Decoded frames from the keyframe at ``seek_pts`` on, with their output slot."""
    container = av.open(job_source)
    try:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        container.seek(seek_pts, stream=video, backward=True, any_frame=False)
        try:
            for packet in container.demux(video):
                for frame in packet.decode():
                    if frame.pts is None:
                        continue
                    t = Fraction(frame.pts) * info.time_base - info.t0
                    yield round(t * info.fps), frame
        except av.error.FFmpegError as exc:
            log.warning("%s: decoding stopped early: %s", job_source, exc)
    finally:
        container.close()


def transcode_chunk(job: ChunkJob) -> ChunkResult:
    """Output frames ``[first_frame, end_frame)`` of every rung as CMAF segments numbered
    from the chunk's first global segment, with global decode times (tfdt)."""
    info, chunk = job.info, job.chunk
    settings = EncoderSettings(fps=info.fps)
    rungs: list[VideoRung] = []
    for rung in job.rungs:
        encoder, track, codec_string = open_video_rung(Backend(job.backend), rung, settings)
        state = RenditionState(
            rung.name,
            track,
            codec_string,
            job.segment_duration,
            0.0,
            float(info.fps),
            chunk.first_segment,
        )
        rungs.append(VideoRung(rung, encoder, state))
    produced: dict[str, list[tuple[SegmentRecord, bytes]]] = {r.rung.name: [] for r in rungs}

    def package(vr: VideoRung, packets: list[Any]) -> None:
        for out in packets:
            if out.pts is None or out.dts is None:
                continue
            data = codecs.annexb_to_length_prefixed(bytes(out))
            finished = vr.rendition.add(out.dts, out.pts, data, out.is_keyframe)
            if finished is not None:
                produced[vr.rung.name].append(finished)

    segment_ticks = job.segment_duration * VIDEO_TIMESCALE
    last_slot = -1

    def emit(frame: Any, n: int) -> None:
        nonlocal last_slot
        pts = frame_pts(n, info.fps)
        slot = int(pts // segment_ticks)
        frame.pts = pts
        frame.time_base = Fraction(1, VIDEO_TIMESCALE)
        frame.pict_type = PictureType.I if slot > last_slot else PictureType.NONE
        last_slot = slot
        for vr in rungs:
            package(vr, vr.encode(frame))

    # Frame-rate conversion as FFmpeg's fps filter does it: each output slot shows the
    # latest source frame at or before it (duplicates fill gaps, extras are dropped).
    held: Any = None
    next_out = chunk.first_frame
    for n, frame in _source_frames(job.source, info, chunk.seek_pts):
        if held is not None and n > next_out:
            rotated = _rotate(held, info.rotation)
            while next_out < min(n, chunk.end_frame):
                emit(rotated, next_out)
                next_out += 1
        held = frame
        if next_out >= chunk.end_frame:
            break
    if held is None:
        raise MediaError(f"no video frames decoded for chunk {chunk.index}")
    if next_out < chunk.end_frame:
        rotated = _rotate(held, info.rotation)
        while next_out < chunk.end_frame:
            emit(rotated, next_out)
            next_out += 1
    end_dts = frame_pts(chunk.end_frame, info.fps)
    outputs = []
    for vr in rungs:
        package(vr, vr.encoder.encode(None))
        finished = vr.rendition.flush(end_dts)
        if finished is not None:
            produced[vr.rung.name].append(finished)
        outputs.append(
            RenditionOutput(
                vr.rung.name,
                vr.rendition.track,
                vr.rendition.codecs,
                tuple(produced[vr.rung.name]),
            )
        )
    return ChunkResult(chunk.index, tuple(outputs))


# ---- audio ------------------------------------------------------------------------


def transcode_audio(job: AudioJob) -> RenditionOutput | None:
    """The whole audio track, once: AAC encoders prime and pad at every start and end, so
    encoding audio per chunk would put a click or a gap at every chunk border. Audio is
    cheap next to video, so one sequential job suffices. Cut on the same segment grid."""
    info = job.info
    encoder, track = open_aac_encoder(job.kbps)
    state = RenditionState("audio", track, "mp4a.40.2", job.segment_duration, 0.0)
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
    end = math.ceil(info.duration * AUDIO_RATE)
    produced: list[tuple[SegmentRecord, bytes]] = []
    next_sample: int | None = None

    def package(packets: list[Any]) -> None:
        for out in packets:
            if out.pts is None or out.pts < 0 or out.pts >= end:
                continue  # priming before our zero, padding after the video's end
            finished = state.add(out.pts, out.pts, bytes(out), True)
            if finished is not None:
                produced.append(finished)

    container = av.open(job.source)
    with container:
        stream = container.streams.audio[0]
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    log.warning("%s: audio decode error (%s); skipped", job.source, exc)
                    continue
                for frame in frames:
                    if next_sample is None:
                        t = (
                            Fraction(frame.pts or 0) * Fraction(stream.time_base or 1)
                            if frame.pts is not None
                            else info.t0
                        )
                        next_sample = max(0, round((t - info.t0) * AUDIO_RATE))
                    frame.pts = None
                    for resampled in resampler.resample(frame):
                        resampled.pts = next_sample
                        next_sample += resampled.samples
                        package(encoder.encode(resampled))
        except av.error.FFmpegError as exc:
            log.warning("%s: audio demux stopped early: %s", job.source, exc)
    package(encoder.encode(None))
    finished = state.flush()
    if finished is not None:
        produced.append(finished)
    if not produced:
        return None
    return RenditionOutput("audio", track, "mp4a.40.2", tuple(produced))


# ---- poster and thumbnails --------------------------------------------------------


def _even(x: float) -> int:
    return max(2, round(x / 2) * 2)


def jpeg(frame: Any, width: int, height: int) -> bytes:
    encoder: Any = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.open()
    picture = frame.reformat(width=width, height=height, format="yuvj420p")
    picture.pts = 0
    return b"".join(bytes(p) for p in [*encoder.encode(picture), *encoder.encode(None)])


def _frame_at(container: Any, info: SourceInfo, seconds: float) -> Any:
    video = container.streams.video[0]
    target = info.t0 + Fraction(seconds).limit_denominator(1000)
    container.seek(int(target / info.time_base), stream=video, backward=True)
    held = None
    for packet in container.demux(video):
        for frame in packet.decode():
            if frame.pts is None:
                continue
            held = frame
            if Fraction(frame.pts) * info.time_base >= target:
                return _rotate(held, info.rotation)
    if held is None:
        raise MediaError(f"no frame to show at {seconds:.1f} s")
    return _rotate(held, info.rotation)


def _timestamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def make_images(source: str, info: SourceInfo) -> Images:
    """Poster at 10 % of the duration; a sprite of one tile every 5 s and a WebVTT
    track whose cues point into it (``thumbnails.jpg#xywh=x,y,w,h``)."""
    scale = min(1.0, 720 / min(info.width, info.height))
    with av.open(source) as container:
        container.streams.video[0].thread_type = "AUTO"
        poster = jpeg(
            _frame_at(container, info, info.duration * 0.1),
            _even(info.width * scale),
            _even(info.height * scale),
        )
        tile_w, tile_h = THUMB_WIDTH, _even(THUMB_WIDTH * info.height / info.width)
        count = max(1, math.ceil(info.duration / THUMB_INTERVAL))
        columns = min(count, SPRITE_COLUMNS)
        rows = math.ceil(count / columns)
        sprite = np.zeros((rows * tile_h, columns * tile_w, 3), dtype=np.uint8)
        cues = ["WEBVTT", ""]
        for i in range(count):
            start = i * THUMB_INTERVAL
            frame = _frame_at(container, info, start)
            tile = frame.reformat(width=tile_w, height=tile_h, format="rgb24").to_ndarray()
            x, y = (i % columns) * tile_w, (i // columns) * tile_h
            sprite[y : y + tile_h, x : x + tile_w] = tile
            end = min(info.duration, start + THUMB_INTERVAL)
            cues += [
                f"{_timestamp(start)} --> {_timestamp(end)}",
                f"thumbnails.jpg#xywh={x},{y},{tile_w},{tile_h}",
                "",
            ]
    sprite_frame = av.VideoFrame.from_ndarray(sprite, format="rgb24")
    return Images(poster, jpeg(sprite_frame, sprite.shape[1], sprite.shape[0]), "\n".join(cues))


# ---- stitching (in the origin: writes to the segment store) -----------------------


def rendition_json(output: RenditionOutput) -> dict[str, Any]:
    """What the job database keeps of a finished chunk/audio rendition (not the bytes,
    which are in the store), so a resumed job can write manifests without redoing it."""
    t = output.track
    return {
        "name": output.name,
        "codecs": output.codecs,
        "track": [
            *(t.track_id, t.kind, t.timescale, t.extradata.hex(), t.width, t.height),
            *(t.sample_rate, t.channels, t.avg_bitrate),
        ],
        "segments": [[r.number, r.start, r.duration, r.size] for r, _ in output.segments],
    }


def write_output(store: SegmentStore, prefix: str, output: RenditionOutput) -> None:
    for record, data in output.segments:
        store.put(f"{prefix}/{output.name}/{record.number}.m4s", data)
    key = f"{prefix}/{output.name}/init.mp4"
    init = init_segment(output.track)
    existing = store.get(key)
    if existing is None:
        store.put(key, init)
    elif existing != init:
        # Every chunk opens its encoders with the same settings, so SPS/PPS agree; if a
        # build ever disagreed, segments would not decode with the shared init segment.
        raise MediaError(f"chunk encoders disagree on the {output.name} stream parameters")


def _state(item: dict[str, Any], segment_duration: Fraction, fps: float) -> RenditionState:
    tid, kind, timescale, extradata, width, height, rate, channels, bitrate = item["track"]
    track = TrackSpec(
        tid, kind, timescale, bytes.fromhex(extradata), width, height, rate, channels, bitrate
    )
    state = RenditionState(item["name"], track, item["codecs"], segment_duration, 0.0, fps)
    for number, start, duration, size in sorted(item["segments"]):
        state.append(SegmentRecord(number, start, duration, size, timescale, 0.0))
    return state


def write_manifests(
    store: SegmentStore,
    prefix: str,
    info: SourceInfo,
    parts: list[dict[str, Any]],
    audio: dict[str, Any] | None,
    segment_duration: Fraction,
) -> list[str]:
    """Join the chunks' records per rung and write the static HLS + DASH manifests;
    returns the rendition names."""
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for item in part["renditions"]:
            entry = merged.setdefault(item["name"], {**item, "segments": []})
            entry["segments"] = entry["segments"] + item["segments"]
    videos = [_state(item, segment_duration, float(info.fps)) for item in merged.values()]
    for state in videos:
        numbers = [s.number for s in state.segments]
        if numbers != list(range(len(numbers))):
            raise MediaError(f"{state.name}: segments missing after stitching ({numbers})")
    videos.sort(key=lambda s: -s.track.height * s.track.width)
    audio_state = _state(audio, segment_duration, 0.0) if audio else None
    write_vod_manifests(store, prefix, videos, audio_state, float(segment_duration))
    return [v.name for v in videos] + (["audio"] if audio_state else [])
