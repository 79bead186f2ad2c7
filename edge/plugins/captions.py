"""Live captions on the edge: Whisper on the audio rendition, WebVTT segments served as the
``captions`` subtitle rendition of HLS and DASH.

Design (where captions live): the edge that owns ``stream:NAME`` in the peer ring
transcribes the stream and keeps its WebVTT segments and playlist in memory; it serves
``/live/NAME/captions/…`` itself. Every other edge fills those paths from that owner (one
PEER hop, then its own cache: segments are immutable, the playlist lives 1 s), never from
the origin, which has no captions. Every edge running the plugin adds the track to
``master.m3u8`` and ``manifest.mpd`` as they pass through (a deterministic, idempotent
rewrite), so all edges serve the same manifest bytes whichever one filled them.

Why not upload to the origin: the origin's manifests are written by the transcoder worker
process, which would need to learn about a track produced elsewhere, and captions would
take a round trip (edge -> origin -> edge) the edge layer exists to avoid. The cost: when
the owner dies, the new owner starts at the live edge and older captions survive only in
the other edges' caches.

Alignment: captions segment N covers audio segment N (same number, duration and program
date time), its cues in media time (see ``edge/plugins/webvtt.py``). Each job transcribes
segments N-context…N and commits the words starting in [end(N-1) - margin, end(N) - margin):
a word cut at a boundary is taken from the window that hears it whole.

Delay bound: at most ``queue`` jobs are queued or running; a segment whose job was skipped
(queue full) or not back within ``max_delay`` seconds is published without cues, so the
captions playlist trails the audio playlist by at most ~``max_delay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.plugins import PluginContext, asr
from edge.plugins.live import OwnedStreams, PlaylistEntry, follow, stream_key
from edge.plugins.webvtt import (
    RENDITION,
    add_dash_captions,
    add_hls_subtitles,
    committed,
    group_cues,
    media_playlist,
    vtt_segment,
)
from edge.plugins.workers import InferencePool, Timed, plugin_metrics
from meshcast.http import json_error
from meshcast.paths import IMMUTABLE, parse_media_path

if TYPE_CHECKING:
    from edge.app import Edge

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CaptionsConfig:
    queue: int = 2
    workers: int = 1
    threads: int = 1  # CTranslate2 threads per worker
    window: int = 10  # captions segments listed in the live playlist
    margin: float = 0.5
    context: int = 2  # earlier segments transcribed with each new one
    max_delay: float = 8.0
    poll_s: float = 0.5

    @classmethod
    def from_context(cls, context: PluginContext) -> CaptionsConfig:
        d = cls()
        return cls(
            queue=int(context.number("queue", d.queue)),
            workers=int(context.number("workers", d.workers)),
            threads=int(context.number("threads", d.threads)),
            window=int(context.number("window", d.window)),
            margin=context.number("margin", d.margin),
            context=int(context.number("context", d.context)),
            max_delay=context.number("max_delay", d.max_delay),
            poll_s=context.number("poll_s", d.poll_s),
        )


@dataclass(slots=True)
class Delay:
    number: int
    since_listed: float  # seconds from the audio segment's listing to its captions'
    behind_live: float | None  # publish time - wall clock of the audio segment's end
    cues: int


@dataclass
class StreamCaptions:
    entries: deque[PlaylistEntry] = field(default_factory=deque)
    segments: dict[int, bytes] = field(default_factory=dict)
    ended: bool = False
    target: int = 2
    delays: deque[Delay] = field(default_factory=lambda: deque(maxlen=200))

    def playlist(self) -> str:
        return media_playlist(list(self.entries), self.ended, self.target)


@dataclass(slots=True)
class _Job:
    entry: PlaylistEntry
    listed_at: float
    last: bool
    future: asyncio.Future[Timed] | None


def _wallclock(pdt: str | None) -> float | None:
    if not pdt:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(pdt.replace("Z", "+00:00")).timestamp()
    return None


class CaptionsPlugin:
    name = "captions"

    def __init__(self, context: PluginContext) -> None:
        self.config = CaptionsConfig.from_context(context)
        self.streams: dict[str, StreamCaptions] = {}
        self._edge: Edge | None = None
        self._pool: InferencePool | None = None
        self._owned: OwnedStreams | None = None
        self._task: asyncio.Task[None] | None = None
        self._delay: Histogram | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self, edge: Edge) -> None:
        self._edge = edge
        registry = edge.metrics.registry
        self._pool = InferencePool(
            self.name,
            plugin_metrics(registry),
            workers=self.config.workers,
            queue=self.config.queue,
            initializer=asr.load_model,
            initargs=(self.config.threads,),
        )
        self._delay = Histogram(
            "meshcast_edge_captions_delay_seconds",
            "Seconds from an audio segment's listing to its captions segment",
            buckets=(0.25, 0.5, 1, 2, 3, 4, 6, 8, 12),
            registry=registry,
        )
        self._owned = OwnedStreams(edge, lambda: edge.plugins.live, self._caption, self.name)
        self._task = asyncio.create_task(self._owned.run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._owned is not None:
            await self._owned.close()
        if self._pool is not None:
            await self._pool.close()

    def routes(self) -> list[BaseRoute]:
        return [Route("/api/captions/{name}", self._status)]

    async def _status(self, request: Request) -> Response:
        name = request.path_params["name"]
        state = self.streams.get(name)
        if state is None:
            return json_error(404, f"no captions for {name!r} on this edge")
        return JSONResponse(
            {
                "name": name,
                "ended": state.ended,
                "segments": [e.number for e in state.entries],
                "delays": [
                    {
                        "number": d.number,
                        "since_listed": d.since_listed,
                        "behind_live": d.behind_live,
                        "cues": d.cues,
                    }
                    for d in state.delays
                ],
            }
        )

    # ---- request-path hooks -------------------------------------------------------------

    def _owner(self, name: str) -> str:
        assert self._edge is not None
        return self._edge.ring.owner(stream_key(name))

    def serve(self, path: str, from_peer: bool) -> Response | None:
        media = parse_media_path(path)
        if media is None or media.rendition != RENDITION or self._edge is None:
            return None
        if not from_peer and self._owner(media.name) != self._edge.self_url:
            return None  # filled from the owner through the normal path (upstream hook)
        state = self.streams.get(media.name) if media.kind == "live" else None
        if state is not None and media.relative.endswith("index.m3u8"):
            headers = {"Cache-Control": "public, max-age=1", "X-Cache": "HIT"}
            return Response(state.playlist(), 200, headers=headers, media_type=media.content_type)
        number = media.relative.rpartition("/")[2].partition(".")[0]
        body = state.segments.get(int(number)) if state and number.isdigit() else None
        if body is None:
            return json_error(404, "not found", path=path)
        headers = {"Cache-Control": IMMUTABLE, "X-Cache": "HIT"}
        return Response(body, 200, headers=headers, media_type=media.content_type)

    def upstream(self, path: str) -> str | None:
        media = parse_media_path(path)
        if media is None or media.rendition != RENDITION:
            return None
        return self._owner(media.name)

    def transform(self, path: str, body: bytes) -> bytes:
        if not path.startswith("/live/"):
            return body
        if path.endswith("/master.m3u8"):
            return add_hls_subtitles(body.decode()).encode()
        if path.endswith("/manifest.mpd"):
            return add_dash_captions(body.decode()).encode()
        return body

    # ---- the owner's work ---------------------------------------------------------------

    async def _caption(self, name: str) -> None:
        assert self._edge is not None and self._pool is not None
        edge, pool = self._edge, self._pool
        state = self.streams[name] = StreamCaptions()
        directory = f"/live/{name}/audio/"
        jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        publisher = asyncio.create_task(self._publish(name, state, jobs))
        init: bytes | None = None
        previous: deque[bytes] = deque(maxlen=max(0, self.config.context))
        try:
            async for entry, playlist in follow(edge, directory, self.config.poll_s):
                listed_at = time.time()
                state.target = playlist.target_duration
                last = playlist.ended and entry is playlist.entries[-1]
                if init is None:
                    init = await edge.fetch(f"{directory}init.mp4")
                segment = await edge.fetch(f"{directory}{entry.number}.m4s")
                future = None
                if init is not None and segment is not None:
                    future = pool.submit(asr.transcribe, init, list(previous), segment)
                if segment is not None and previous.maxlen:
                    previous.append(segment)
                jobs.put_nowait(_Job(entry, listed_at, last, future))
            jobs.put_nowait(None)
            await publisher
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher

    async def _publish(
        self, name: str, state: StreamCaptions, jobs: asyncio.Queue[_Job | None]
    ) -> None:
        """Publishes captions segments in order (a playlist never gains a gap)."""
        lower: float | None = None  # end of the words committed so far
        estimate = 0.0  # media time of the next segment, for cue-less segments
        while (job := await jobs.get()) is not None:
            cues: list[Any] = []
            start = estimate
            transcript: asr.Transcript | None = None
            if job.future is not None:
                remaining = job.listed_at + self.config.max_delay - time.time()
                try:
                    timed = await asyncio.wait_for(asyncio.shield(job.future), max(0.0, remaining))
                    transcript = timed.value
                except (TimeoutError, Exception) as exc:
                    log.info("captions %s/%d: no transcript (%r)", name, job.entry.number, exc)
            if transcript is not None:
                start = transcript.start
                low = lower if lower is not None else transcript.start - self.config.margin
                high = None if job.last else transcript.end - self.config.margin
                cues = group_cues(committed(transcript.words, low, high))
                lower = high
                estimate = transcript.end
            else:
                lower = None  # the next window starts where its own audio starts
                estimate = start + job.entry.duration
            state.segments[job.entry.number] = vtt_segment(cues, start)
            state.entries.append(job.entry)
            while len(state.entries) > self.config.window:
                old = state.entries.popleft()
                # Kept one more window: a player may hold a playlist that still lists it.
                state.segments.pop(old.number - self.config.window, None)
            state.ended = job.last
            now = time.time()
            since = now - job.listed_at
            wall = _wallclock(job.entry.program_date_time)
            behind = None if wall is None else now - (wall + job.entry.duration)
            state.delays.append(Delay(job.entry.number, since, behind, len(cues)))
            if self._delay is not None:
                self._delay.observe(since)
        state.ended = True
