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
date time), its cues in media time (see ``edge/plugins/webvtt.py``). A job hears the last
``context`` segments again before its new ones and commits, per new segment, the words
starting in [end(previous) - margin, end(this) - margin): a word cut at a boundary is taken
from the window that hears it whole.

Load: one job runs at a time; segments listed meanwhile wait and all go into the next job
(Whisper's cost is nearly flat up to its 30 s window), so a slow or busy CPU makes jobs
longer, not more numerous. Delay bound: at most ``max_batch`` segments wait; older ones, and
those whose job is not back ``max_delay`` s after they were listed, are published without
cues (counted as skipped), so the captions playlist trails the audio by at most about
``max_delay``.

VOD (``/vod/ASSET/…``): the ring owner of ``vod:ASSET`` captions an asset once, on demand:
the first request on a captions edge for the asset's ``master.m3u8``, ``manifest.mpd`` or
captions playlist schedules the job at the owner (another edge nudges the owner by filling
the captions playlist from it, at most once per ``vod_nudge_s``). The job reads the audio
rendition's complete playlist (it must carry ENDLIST) and its segments through the fill
path, transcribes them in chunks of ``vod_batch`` segments with ``context`` segments heard
again, in the same worker pool and with the same commit and alignment rules as live (a
chunk waits for a free slot instead of queueing past the pool's bound: live jobs keep their
turn). Until the captions are complete the captions playlist answers 404 (``no-store``;
edges cache only 200s), then a VOD playlist with ENDLIST. The master and MPD always carry
the track, ready or not: VOD manifests are cached for an hour by edges and players, and a
track added only once ready would leave edges and caches serving different manifests; a
player treats the not-yet-ready subtitle playlist as a non-fatal error. Nothing is
persisted: captions live in the owner's memory (at most ``vod_assets`` assets, oldest
evicted) and are redone on demand after a restart or an ownership move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.plugins import EdgeHost, PluginContext, asr
from edge.plugins.assets import OwnedAssets, vod_key
from edge.plugins.live import (
    OwnedStreams,
    PlaylistEntry,
    follow,
    parse_media_playlist,
    stream_key,
)
from edge.plugins.webvtt import (
    RENDITION,
    Cue,
    add_dash_captions,
    add_hls_subtitles,
    committed,
    group_cues,
    media_playlist,
    vtt_segment,
)
from edge.plugins.workers import InferencePool, ModelPlugin, Timed, plugin_metrics
from meshcast.http import json_error
from meshcast.paths import IMMUTABLE, parse_media_path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CaptionsConfig:
    max_batch: int = 4  # segments per job at most (8 s of new audio: within Whisper's 30 s)
    threads: int = 1  # CTranslate2 threads per worker
    window: int = 10  # captions segments listed in the live playlist
    margin: float = 0.5
    context: int = 2  # earlier segments transcribed with each new one
    max_delay: float = 8.0
    poll_s: float = 0.5
    vod_batch: int = 12  # segments per VOD job (24 s + context: within Whisper's 30 s)
    vod_assets: int = 64  # captioned VOD assets kept in memory
    vod_retry_s: float = 60.0  # a failed VOD job is not retried before this
    vod_nudge_s: float = 30.0

    @classmethod
    def from_context(cls, context: PluginContext) -> CaptionsConfig:
        d = cls()
        return cls(
            max_batch=int(context.number("max_batch", d.max_batch)),
            threads=int(context.number("threads", d.threads)),
            window=int(context.number("window", d.window)),
            margin=context.number("margin", d.margin),
            context=int(context.number("context", d.context)),
            max_delay=context.number("max_delay", d.max_delay),
            poll_s=context.number("poll_s", d.poll_s),
            vod_batch=int(context.number("vod_batch", d.vod_batch)),
            vod_assets=int(context.number("vod_assets", d.vod_assets)),
            vod_retry_s=context.number("vod_retry_s", d.vod_retry_s),
            vod_nudge_s=context.number("vod_nudge_s", d.vod_nudge_s),
        )


@dataclass(slots=True)
class Delay:
    number: int
    since_listed: float  # seconds from the audio segment's listing to its captions'
    behind_live: float | None  # publish time - wall clock of the audio segment's end
    cues: int
    transcribed: bool


@dataclass
class StreamCaptions:
    entries: deque[PlaylistEntry] = field(default_factory=deque)
    segments: dict[int, bytes] = field(default_factory=dict)
    ended: bool = False
    target: int = 2
    delays: deque[Delay] = field(default_factory=lambda: deque(maxlen=200))

    vod: bool = False

    def playlist(self) -> str:
        return media_playlist(list(self.entries), self.ended, self.target, vod=self.vod)


@dataclass(slots=True)
class _Pending:
    entry: PlaylistEntry
    listed_at: float
    last: bool
    segment: bytes | None


@dataclass(slots=True)
class _Batch:
    items: list[_Pending]
    future: asyncio.Future[Timed] | None


def commit_segment(
    transcript: asr.Transcript, index: int, lower: float | None, last: bool, margin: float
) -> tuple[float, list[Cue], float | None, float]:
    """(start, cues, new lower bound, end) of target segment ``index`` of a transcript:
    the words starting in [lower, end - margin) (to the end for the last segment), shared by
    the live and VOD paths so both cut words at segment boundaries the same way."""
    start, end = transcript.spans[index]
    low = lower if lower is not None else start - margin
    high = None if last else end - margin
    return start, group_cues(committed(transcript.words, low, high)), high, end


def _wallclock(pdt: str | None) -> float | None:
    if not pdt:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(pdt.replace("Z", "+00:00")).timestamp()
    return None


class CaptionsPlugin(ModelPlugin[StreamCaptions]):
    name = "captions"

    def __init__(self, edge: EdgeHost) -> None:
        super().__init__()
        self.config = CaptionsConfig.from_context(edge.options(self.name))
        self.streams: dict[str, StreamCaptions] = {}
        self._edge = edge
        self._delay: Histogram | None = None
        self.vod = OwnedAssets(
            edge,
            "captions",
            lambda: StreamCaptions(vod=True),
            self._caption_vod,
            self._nudge,
            keep=self.config.vod_assets,
            retry_s=self.config.vod_retry_s,
            nudge_s=self.config.vod_nudge_s,
        )

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        edge = self._edge
        registry = edge.registry
        self._pool = InferencePool(
            self.name,
            plugin_metrics(registry),
            queue=1,  # one job at a time: segments arriving meanwhile join the next job
            initializer=asr.load_model,
            initargs=(self.config.threads,),
        )
        self._pool.warm()
        self._delay = Histogram(
            "meshcast_edge_captions_delay_seconds",
            "Seconds from an audio segment's listing to its captions segment",
            buckets=(0.25, 0.5, 1, 2, 3, 4, 6, 8, 12),
            registry=registry,
        )
        self._owned = OwnedStreams(edge, self._caption, self.name)
        self._tasks.append(asyncio.create_task(self._owned.run()))

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
                        "transcribed": d.transcribed,
                    }
                    for d in state.delays
                ],
            }
        )

    # ---- request-path hooks -------------------------------------------------------------

    def _owner(self, kind: str, name: str) -> str:
        assert self._edge is not None
        return self._edge.ring.owner(vod_key(name) if kind == "vod" else stream_key(name))

    def demand(self, path: str, token: str | None, from_peer: bool) -> None:
        """VOD: a request for an asset's manifest (or, at its owner, for its captions)
        schedules the asset's job at the owner of vod:ASSET, reading it with the token that
        admitted the request (token-only assets)."""
        if not path.startswith("/vod/"):
            return
        media = parse_media_path(path)
        if media is None or self._edge is None:
            return
        manifest = media.relative in ("master.m3u8", "manifest.mpd")
        if not manifest and media.rendition != RENDITION:
            return
        # A non-owner nudges the owner for a viewer's manifest request only.
        self.vod.demand(media.name, token, nudge=manifest and not from_peer)

    def serve(self, path: str, from_peer: bool) -> Response | None:
        media = parse_media_path(path)
        if media is None or self._edge is None:
            return None
        if media.rendition != RENDITION:
            return None  # manifests and media segments: the normal path
        if not from_peer and self._owner(media.kind, media.name) != self._edge.self_url:
            return None  # filled from the owner through the normal path (upstream hook)
        state = self.vod.done(media.name) if media.kind == "vod" else self.streams.get(media.name)
        if state is not None and media.relative.endswith("index.m3u8"):
            age = 3600 if state.vod else 1  # a complete VOD playlist no longer changes
            headers = {"Cache-Control": f"public, max-age={age}", "X-Cache": "HIT"}
            return Response(state.playlist(), 200, headers=headers, media_type=media.content_type)
        number = media.relative.rpartition("/")[2].partition(".")[0]
        body = state.segments.get(int(number)) if state and number.isdigit() else None
        if body is None:
            missing = json_error(404, "not found", path=path)
            # Not ready yet (VOD) or not captioned yet (live): ask again later.
            missing.headers["Cache-Control"] = "no-store"
            return missing
        headers = {"Cache-Control": IMMUTABLE, "X-Cache": "HIT"}
        return Response(body, 200, headers=headers, media_type=media.content_type)

    def upstream(self, path: str) -> str | None:
        media = parse_media_path(path)
        if media is None or media.rendition != RENDITION:
            return None
        return self._owner(media.kind, media.name)

    def transform(self, path: str, body: bytes) -> bytes:
        if not path.startswith(("/live/", "/vod/")):
            return body
        if path.endswith("/master.m3u8"):
            return add_hls_subtitles(body.decode()).encode()
        if path.endswith("/manifest.mpd"):
            return add_dash_captions(body.decode()).encode()
        return body

    # ---- the owner's work ---------------------------------------------------------------

    async def _caption(self, name: str) -> None:
        assert self._edge is not None and self._pool is not None
        edge, pool, config = self._edge, self._pool, self.config
        state = self.streams[name] = StreamCaptions()
        directory = f"/live/{name}/audio/"
        batches: asyncio.Queue[_Batch | None] = asyncio.Queue()
        publisher = asyncio.create_task(self._publish(name, state, batches))
        waiting: list[_Pending] = []
        history: deque[bytes] = deque(maxlen=max(0, config.context))
        running: list[asyncio.Future[Timed]] = []
        init: bytes | None = None

        def dispatch() -> None:
            """One job at a time over every segment waiting: under load jobs grow instead
            of piling up (Whisper's cost is nearly flat in the audio length)."""
            if not waiting or any(not f.done() for f in running):
                return
            running.clear()
            while len(waiting) > config.max_batch:
                # A backlog beyond the bound: the oldest go out without cues (counted).
                batches.put_nowait(_Batch([waiting.pop(0)], None))
                pool.skip()
            if init is None or any(p.segment is None for p in waiting):
                # No audio for part of the run: a gap would shift every word after it.
                batches.put_nowait(_Batch(waiting[:], None))
                pool.skip(len(waiting))
                waiting.clear()
                history.clear()
                return
            targets = [p.segment for p in waiting if p.segment is not None]
            future = pool.submit(asr.transcribe, init, list(history), targets)
            if future is None:
                return  # the pool is busy with a job we gave up waiting for: later
            history.extend(targets)
            batches.put_nowait(_Batch(waiting[:], future))
            waiting.clear()
            running.append(future)
            future.add_done_callback(lambda _: dispatch())

        try:
            async for entry, playlist in follow(edge, directory, config.poll_s):
                listed_at = time.time()
                state.target = playlist.target_duration
                last = playlist.ended and entry is playlist.entries[-1]
                if init is None:
                    init = await edge.fetch(f"{directory}init.mp4")
                segment = await edge.fetch(f"{directory}{entry.number}.m4s")
                waiting.append(_Pending(entry, listed_at, last, segment))
                dispatch()
            while waiting:
                await asyncio.sleep(0.1)
                dispatch()
            batches.put_nowait(None)
            await publisher
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher

    async def _publish(
        self, name: str, state: StreamCaptions, batches: asyncio.Queue[_Batch | None]
    ) -> None:
        """Publishes captions segments in order (a playlist never gains a gap)."""
        lower: float | None = None  # end of the words committed so far
        estimate = 0.0  # media time of the next segment, for cue-less segments
        while (batch := await batches.get()) is not None:
            transcript: asr.Transcript | None = None
            if batch.future is not None:
                remaining = batch.items[0].listed_at + self.config.max_delay - time.time()
                try:
                    timed = await asyncio.wait_for(asyncio.shield(batch.future), max(0, remaining))
                    transcript = timed.value
                except (TimeoutError, Exception) as exc:
                    numbers = [p.entry.number for p in batch.items]
                    log.info("captions %s %s: no transcript (%r)", name, numbers, exc)
            for i, item in enumerate(batch.items):
                cues: list[Cue] = []
                if transcript is not None and i < len(transcript.spans):
                    start, cues, lower, estimate = commit_segment(
                        transcript, i, lower, item.last, self.config.margin
                    )
                else:
                    start = estimate
                    lower = None  # the next window starts where its own audio starts
                    estimate = start + item.entry.duration
                self._add(state, item, vtt_segment(cues, start), transcript is not None, len(cues))
        state.ended = True

    # ---- VOD: one job per asset, at the owner of vod:ASSET ------------------------------

    async def _nudge(self, owner: str, asset: str, token: str | None) -> None:
        """A non-owner edge makes the owner schedule the job by filling the captions
        playlist from it (a 404 until ready, which no edge caches)."""
        assert self._edge is not None
        await self._edge.fetch(f"/vod/{asset}/{RENDITION}/index.m3u8", refresh=True, token=token)

    async def _caption_vod(self, asset: str, state: StreamCaptions, token: str | None) -> None:
        """Captions of a whole VOD asset into ``state``; LookupError when its audio is not
        available (yet)."""
        assert self._edge is not None and self._pool is not None
        edge, pool, config = self._edge, self._pool, self.config
        directory = f"/vod/{asset}/audio/"
        body = await edge.fetch(f"{directory}index.m3u8", token=token)
        if body is None:
            raise LookupError(f"no {directory}index.m3u8 (or it is token-only, without a token)")
        playlist = parse_media_playlist(body.decode("utf-8", "replace"))
        if not playlist.ended or not playlist.entries:
            raise LookupError(f"{directory} is not a finished VOD rendition")
        init = await edge.fetch(f"{directory}init.mp4", token=token)
        segments: list[bytes] = []
        for entry in playlist.entries:
            segment = await edge.fetch(f"{directory}{entry.number}.m4s", token=token)
            if segment is None or init is None:
                # A gap would shift every word after it.
                raise LookupError(f"{directory}: segment {entry.number} or init.mp4 missing")
            segments.append(segment)
        assert init is not None
        state.target = playlist.target_duration
        lower: float | None = None
        batch = max(1, config.vod_batch)
        for first in range(0, len(segments), batch):
            context = segments[max(0, first - config.context) : first]
            targets = segments[first : first + batch]
            # Waits for a free slot rather than queue past the bound or skip: the asset is
            # captioned once, and live jobs get the slot as often as we do.
            future = await pool.submit_when_free(asr.transcribe, init, context, targets)
            transcript: asr.Transcript = (await future).value
            for i, entry in enumerate(playlist.entries[first : first + batch]):
                last = first + i == len(segments) - 1
                start, cues, lower, _ = commit_segment(transcript, i, lower, last, config.margin)
                state.segments[entry.number] = vtt_segment(cues, start)
                state.entries.append(entry)
        state.ended = True
        log.info("captions of VOD %s: %d segments", asset, len(state.entries))

    def _add(
        self, state: StreamCaptions, item: _Pending, vtt: bytes, transcribed: bool, cues: int
    ) -> None:
        number = item.entry.number
        state.segments[number] = vtt
        state.entries.append(item.entry)
        while len(state.entries) > self.config.window:
            state.entries.popleft()
            # Kept one more window: a player may hold a playlist that still lists it.
            state.segments.pop(number - 2 * self.config.window, None)
        state.ended = item.last
        now = time.time()
        since = now - item.listed_at
        wall = _wallclock(item.entry.program_date_time)
        behind = None if wall is None else now - (wall + item.entry.duration)
        state.delays.append(Delay(number, since, behind, cues, transcribed))
        if self._delay is not None:
            self._delay.observe(since)
