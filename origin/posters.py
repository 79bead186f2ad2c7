"""Live posters: ``/live/NAME/poster.jpg`` is the first frame (a keyframe: every segment
starts with one) of the newest segment of the stream's smallest rung, made on request
and kept ``POSTER_TTL`` seconds, so the landing page shows what is on air now."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Final

import av

from meshcast.store import SegmentStore
from transcoder.vod_transcode import jpeg

log = logging.getLogger(__name__)

POSTER_TTL: Final = 10.0
POSTER_WIDTH: Final = 320
MAX_POSTERS: Final = 1000


def _newest_segment(store: SegmentStore, name: str) -> tuple[str, bytes, bytes] | None:
    """(rendition, init, newest segment) of the smallest video rung, or None."""
    master = store.get(f"live/{name}/master.m3u8")
    if master is None:
        return None
    # Variants are listed largest first (transcoder/hls.py): the last is the smallest.
    variants = [
        line.strip()
        for line in master.decode(errors="replace").splitlines()
        if line.strip().endswith("/index.m3u8") and not line.startswith("#")
    ]
    if not variants:
        return None
    rendition = variants[-1].split("/")[0]
    playlist = store.get(f"live/{name}/{rendition}/index.m3u8")
    init = store.get(f"live/{name}/{rendition}/init.mp4")
    if playlist is None or init is None:
        return None
    segments = [
        line.strip()
        for line in playlist.decode(errors="replace").splitlines()
        if line.strip().endswith(".m4s") and not line.startswith("#")
    ]
    for segment in reversed(segments[-3:]):  # the newest may just have slid out
        data = store.get(f"live/{name}/{rendition}/{segment}")
        if data is not None:
            return rendition, init, data
    return None


def live_poster(store: SegmentStore, name: str) -> bytes | None:
    """A JPEG of what the stream shows now, or None when it has no segment yet."""
    found = _newest_segment(store, name)
    if found is None:
        return None
    rendition, init, segment = found
    try:
        with av.open(io.BytesIO(init + segment), mode="r", format="mp4") as container:
            frame = next(container.decode(video=0), None)
    except av.error.FFmpegError as exc:
        log.warning("stream %s: no poster from %s: %s", name, rendition, exc)
        return None
    if frame is None:
        return None
    height = max(2, round(frame.height * POSTER_WIDTH / frame.width / 2) * 2)
    return jpeg(frame, POSTER_WIDTH, height)


class LivePosters:
    def __init__(self, store: SegmentStore) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._making: dict[str, asyncio.Task[bytes | None]] = {}

    async def get(self, name: str) -> bytes | None:
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and now - cached[0] < POSTER_TTL:
            return cached[1]
        # One decode per stream at a time, however many viewers ask (a small frame: a
        # thread suffices, the event loop never decodes).
        task = self._making.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                asyncio.to_thread(live_poster, self.store, name)
            )
            self._making[name] = task
            task.add_done_callback(lambda _: self._making.pop(name, None))
        poster = await task
        if poster is not None:
            if len(self._cache) >= MAX_POSTERS:
                self._cache.pop(next(iter(self._cache)))
            self._cache[name] = (now, poster)
        return poster
