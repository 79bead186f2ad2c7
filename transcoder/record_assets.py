"""Recordings and clips as VOD assets: static playlists, MPD, poster and thumbnails over
segments the live transcoder already encoded (nothing is re-encoded).

Plain functions of picklable arguments, run in the origin's worker processes (the
poster and the seek-bar sprite decode a frame per tile).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meshcast.store import LocalStore, SegmentStore, open_store
from transcoder import vod_transcode as vod
from transcoder.packager import write_vod_manifests
from transcoder.recording import STOPPED, Recording, RecordingError, load
from transcoder.segments import RenditionState

log = logging.getLogger(__name__)

# The poster and sprite come from the smallest rung; recordings longer than this many of
# its segments get images from the first ones only (a bounded temp file and decode).
MAX_IMAGE_SEGMENTS: Final = 1800


@dataclass(frozen=True, slots=True)
class AssetResult:
    duration: float
    renditions: tuple[str, ...]
    bytes: int
    segments: int  # of the reference (largest) video rendition
    stopped: str | None = None  # why the recording stopped early (its disk budget)


def _result(recording: Recording) -> AssetResult:
    size = sum(s.size for r in recording.renditions for s in r.segments)
    return AssetResult(
        round(recording.duration, 3),
        tuple(r.name for r in recording.renditions),
        size,
        len(recording.videos[0].segments),
        recording.status.get("reason") if recording.status.get("state") == STOPPED else None,
    )


def _write(store: SegmentStore, prefix: str, recording: Recording) -> AssetResult:
    if not recording.videos or not recording.videos[0].segments:
        raise RecordingError("nothing recorded: no video segment")
    write_vod_manifests(
        store, prefix, recording.videos, recording.audio, float(recording.segment_duration)
    )
    return _result(recording)


def finish_recording(store_spec: str, root: Path, prefix: str) -> AssetResult:
    """The recording under ``prefix`` becomes a static asset in place: the span every
    rendition covers, its manifests (master last: it marks the asset complete)."""
    store = open_store(store_spec, root)
    recording = load(store, prefix).whole()
    return _write(store, prefix, recording)


def plan_clip(store_spec: str, root: Path, source: str, seconds: float) -> tuple[float, float, int]:
    """The media time range of the last ``seconds`` of the recording at ``source`` and the
    bytes a clip of it takes; RecordingError (with the reason) when out of range."""
    store = open_store(store_spec, root)
    recording = load(store, source)
    start, end = recording.last(seconds)
    part = recording.cut(start, end)
    return start, end, sum(s.size for r in part.renditions for s in r.segments)


def cut_clip(
    store_spec: str, root: Path, source: str, prefix: str, start: float, end: float
) -> AssetResult:
    """Segments ``[start, end)`` of the recording at ``source`` as a new asset at ``prefix``
    (hard links on local disk, copies elsewhere), with its own manifests."""
    store = open_store(store_spec, root)
    part = load(store, source).cut(start, end)
    if not part.videos or not part.videos[0].segments:
        raise RecordingError("the range has no video segment")
    for state in part.renditions:
        _copy(store, f"{source}/{state.name}/init.mp4", f"{prefix}/{state.name}/init.mp4")
        for seg in state.segments:
            name = f"{state.name}/{seg.number}.m4s"
            _copy(store, f"{source}/{name}", f"{prefix}/{name}")
    return _write(store, prefix, part)


def _copy(store: SegmentStore, src: str, dst: str) -> None:
    if isinstance(store, LocalStore):
        target = store.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(store.path(src), target)
            return
        except FileExistsError:
            return
        except OSError:
            pass
    data = store.get(src)
    if data is None:
        raise RecordingError(f"recorded segment {src} is missing")
    store.put(dst, data)


def make_images(store_spec: str, root: Path, prefix: str) -> None:
    """Poster and seek-bar thumbnails of a finished asset, from its smallest rung's
    segments joined into one fragmented MP4 (the upload pipeline's image maker reads it)."""
    store = open_store(store_spec, root)
    recording = load(store, prefix)
    smallest: RenditionState = min(recording.videos, key=lambda s: s.track.width * s.track.height)
    playlist = store.get(f"{prefix}/{smallest.name}/index.m3u8")
    if playlist is None:
        raise RecordingError(f"{prefix}: no playlist for {smallest.name}")
    numbers = [
        int(line.removesuffix(".m4s"))
        for line in playlist.decode().splitlines()
        if line.endswith(".m4s")
    ][:MAX_IMAGE_SEGMENTS]
    with tempfile.TemporaryDirectory(prefix="meshcast-rec-") as tmp:
        joined = Path(tmp) / "joined.mp4"
        with joined.open("wb") as out:
            for key in [f"{prefix}/{smallest.name}/init.mp4"] + [
                f"{prefix}/{smallest.name}/{n}.m4s" for n in numbers
            ]:
                data = store.get(key)
                if data is None:
                    raise RecordingError(f"recorded segment {key} is missing")
                out.write(data)
        info = vod.probe(joined)
        images = vod.make_images(str(joined), info)
    store.put(f"{prefix}/poster.jpg", images.poster)
    store.put(f"{prefix}/thumbnails.jpg", images.sprite)
    store.put(f"{prefix}/thumbnails.vtt", images.vtt)


def discard_index(store_spec: str, root: Path, prefix: str) -> None:
    """Nothing to keep (no segment): remove what the recording wrote."""
    open_store(store_spec, root).clear(prefix)
    log.info("recording %s had no media; removed", prefix)
