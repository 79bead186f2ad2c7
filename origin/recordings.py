"""Live recordings and clips on the origin (DESIGN.md: Recordings).

A publication whose stream key records (the default; ``keys create … --no-record`` opts
out) gets a VOD asset id when it starts: the transcoder worker stores every segment
there as it is cut (transcoder/recording.py) and the asset is listed by ``GET /api/vod``
in state ``recording``. When the worker has finished, the asset gets static manifests
(nothing is re-encoded), a poster and thumbnails, and turns ``ready``. The asset has
the stream's owner and its access policy at the time.

Clips (``POST /api/streams/NAME/clips``, ``{"seconds": N}``) are the last N seconds of
the stream's current or latest recording, in whole segments (cut at keyframes), as a new
asset: hard links to the recorded segments, new manifests.

An owner's disk budget is its VOD storage quota (uploads, recordings and clips together;
``--record-budget`` may cap recordings lower): no recording starts once it is full, and
one that reaches it stops (keeping what it has).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from meshcast import events
from meshcast.config import OriginConfig
from meshcast.events import EventBus
from meshcast.ingest import AudioConfig, MediaPacket, PacketSink, VideoConfig
from meshcast.keys import InvalidName, KeyStore, validate_stream_name
from meshcast.lifeline import worker_pool
from meshcast.logs import setup_logging
from meshcast.paths import vod_urls
from origin import vod_jobs as jobs_db
from origin.access_api import AccessApi, ApiError, _json_object, _wrap
from origin.entitlements import AccessStore
from origin.http_app import ListedAsset
from origin.registry import LiveStream
from origin.vod_service import VodService
from transcoder import record_assets
from transcoder.recording import RecordingError, RecordingTarget

log = logging.getLogger(__name__)

LIVE: Final = "live"
CLIP: Final = "clip"
STATUS_POLL: Final = 2.0
# At start, this many newest recordings and clips get their poster made if it is missing.
IMAGES_RETRY: Final = 20
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS recordings (
    asset TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    parent TEXT,
    started REAL NOT NULL,
    ended REAL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS recordings_stream ON recordings(stream, started);
"""

T = TypeVar("T")


@dataclass(slots=True)
class RecordingRow:
    asset: str
    stream: str
    owner: str
    kind: str  # live | clip
    parent: str | None
    started: float
    ended: float | None = None
    reason: str | None = None  # why a recording stopped early or was discarded

    def to_json(self) -> dict[str, Any]:
        return {
            "asset": self.asset,
            "stream": self.stream,
            "owner": self.owner,
            "kind": self.kind,
            "parent": self.parent,
            "started": self.started,
            "ended": self.ended,
            "reason": self.reason,
        }


class RecordingDb:
    """``DATA/vod/recordings.sqlite``: which assets are recordings and clips of which
    stream (the VOD job table keeps their state, owner and size)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, row: RecordingRow) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO recordings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (row.asset, row.stream, row.owner, row.kind, row.parent, row.started,
                 row.ended, row.reason),
            )  # fmt: skip

    def end(self, asset: str, reason: str | None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE recordings SET ended = ?, reason = COALESCE(?, reason) WHERE asset = ?",
                (time.time(), reason, asset),
            )

    def delete(self, asset: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM recordings WHERE asset = ?", (asset,))

    def _rows(self, where: str, args: tuple[Any, ...]) -> list[RecordingRow]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM recordings WHERE {where} ORDER BY started",  # noqa: S608
                args,
            ).fetchall()
        return [RecordingRow(*r) for r in rows]

    def of_stream(self, stream: str) -> list[RecordingRow]:
        return self._rows("stream = ?", (stream,))

    def of_assets(self, assets: list[str]) -> list[RecordingRow]:
        if not assets:
            return []
        marks = ",".join("?" * len(assets))
        return self._rows(f"asset IN ({marks})", tuple(assets))

    def recent(self, limit: int) -> list[RecordingRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM recordings ORDER BY started DESC LIMIT ?", (limit,)
            ).fetchall()
        return [RecordingRow(*r) for r in rows]

    def unfinished(self) -> list[RecordingRow]:
        return self._rows("kind = ? AND ended IS NULL", (LIVE,))


class _FinishAfterEnd:
    """The transcoder's sink, plus: when the stream ends, finish its recording once the
    transcoder has written its last segment."""

    def __init__(self, inner: PacketSink, ended: Callable[[], None]) -> None:
        self.inner = inner
        self._ended = ended

    def on_video_config(self, config: VideoConfig) -> None:
        self.inner.on_video_config(config)

    def on_audio_config(self, config: AudioConfig) -> None:
        self.inner.on_audio_config(config)

    def on_packet(self, packet: MediaPacket) -> None:
        self.inner.on_packet(packet)

    def on_end(self) -> None:
        self.inner.on_end()
        self._ended()


class Recordings:
    def __init__(
        self,
        config: OriginConfig,
        keys: KeyStore,
        access: AccessStore,
        api: AccessApi,
        vod: VodService,
        bus: EventBus,
    ) -> None:
        self.config = config
        self.settings = config.recording
        self.keys = keys
        self.access = access
        self.api = api
        self.vod = vod
        self.bus = bus
        self.store_spec = config.transcode.segment_store
        self.root = config.data_dir
        # Opened here (like the access store): the API answers before start() too.
        self.db = RecordingDb(config.data_dir / "vod" / "recordings.sqlite")
        # Per stream name: the running publication's recording, or why it is not recorded.
        self.live: dict[str, RecordingRow] = {}
        self.refused: dict[str, str] = {}
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Running recordings' status.json (bytes so far, stop reason), read off the event
        # loop every STATUS_POLL seconds: the segment store may be S3.
        self._status: dict[str, dict[str, Any]] = {}
        self._poller: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        # Recordings whose origin stopped mid-stream: the worker wrote its index up to the
        # last segment; finish them with what is there (nothing recorded is lost).
        for row in self.db.unfinished():
            log.info("recording %s of %s interrupted by a restart; finishing", row.asset,
                     row.stream)  # fmt: skip
            self._spawn(self._finish(row, lambda: asyncio.sleep(0)))
        # Posters of recent assets whose images were cut short by a stop.
        for row in self.db.recent(IMAGES_RETRY):
            job = self._job(row.asset)
            if job is not None and job.state == jobs_db.READY:
                self._spawn(self._images(row.asset, only_missing=True))
        self._poller = asyncio.get_running_loop().create_task(self._poll_status())

    async def _poll_status(self) -> None:
        while True:
            running = [r.asset for r in self.live.values() if r.ended is None]
            for asset in running:
                self._status[asset] = await asyncio.to_thread(self._read_status, asset)
            for asset in [a for a in self._status if a not in running]:
                del self._status[asset]
            await asyncio.sleep(STATUS_POLL)

    def _read_status(self, asset: str) -> dict[str, Any]:
        raw = self.vod.store.get(f"vod/{asset}/recording/status.json")
        try:
            status = json.loads(raw) if raw is not None else {}
        except ValueError:
            status = {}
        return status if isinstance(status, dict) else {}

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._tasks:
            # Finishing writes manifests (seconds); images cut short are made at the next
            # start (start(): recent assets without a poster).
            await asyncio.wait(list(self._tasks), timeout=30)
        for task in list(self._tasks):
            task.cancel()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)
            self._pool = None
        self.db.close()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            level = logging.getLevelName(logging.getLogger().level)
            self._pool = worker_pool(2, setup_logging, (level,))
        return self._pool

    async def _in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), fn, self.store_spec, self.root, *args)

    def _jobs(self) -> jobs_db.JobStore:
        assert self.vod.jobs is not None, "VodService.start() not called"
        return self.vod.jobs

    def _job(self, asset: str) -> jobs_db.Job | None:
        # None before the VOD service started too (the API answers as for no recording).
        return self.vod.jobs.get(asset) if self.vod.jobs is not None else None

    # ---- budget ---------------------------------------------------------------------

    @property
    def budget(self) -> int:
        """Bytes one owner may keep: the VOD quota, or the recording cap when lower."""
        quota = self.config.vod.max_owner_bytes
        cap = self.settings.owner_budget
        return quota if cap is None else min(quota, cap)

    def used(self, owner: str) -> int:
        """Bytes the owner keeps: every asset (uploads, finished recordings and clips, as
        the VOD quota counts them) plus running recordings as far as they got."""
        kept, _ = self._jobs().usage(owner)
        running = [r.asset for r in self.live.values() if r.owner == owner and r.ended is None]
        return kept + sum(self._recorded_bytes(asset) for asset in running)

    def _recorded_bytes(self, asset: str) -> int:
        recorded = self._status.get(asset, {}).get("bytes", 0)
        return recorded if isinstance(recorded, int) else 0

    # ---- live recordings --------------------------------------------------------------

    def begin(self, stream: LiveStream) -> RecordingTarget | None:
        """Called when ``stream`` is published: where to record it, or None."""
        self.refused.pop(stream.name, None)
        self.live.pop(stream.name, None)
        owner = self.keys.owner_of(stream.name)
        if not self.settings.enabled or owner is None or not self.keys.records(stream.name):
            return None
        if self.vod.jobs is None:  # published in the instant before the VOD store opened
            self.unsupported(stream, "the origin is still starting")
            return None
        budget = self.budget
        used = self.used(owner)
        if budget - used < self._segment_bytes():
            reason = (
                f"not recorded: the disk budget of {owner!r} is full ({used} of {budget} "
                "bytes used); delete assets (recordings, clips, uploads) to record again"
            )
            self.refused[stream.name] = reason
            log.warning("stream %s: %s", stream.name, reason)
            # After the registry's stream.published (this runs while it publishes).
            asyncio.get_running_loop().call_soon(
                self.bus.emit, events.RecordingRefused(stream.name, reason)
            )
            return None
        asset = secrets.token_hex(8)
        when = datetime.fromtimestamp(stream.started_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        row = RecordingRow(asset, stream.name, owner, LIVE, None, stream.started_at)
        self._jobs().create(asset, owner, f"{stream.name} {when}", 0)
        self._jobs().update(asset, state=jobs_db.RECORDING)
        policy = self.access.policy(f"live/{stream.name}")
        self.access.set_policy(f"vod/{asset}", policy.access, owner)
        self.db.add(row)
        self.live[stream.name] = row
        window = math.ceil(self.settings.dvr_window / self.config.transcode.segment_duration)
        log.info("stream %s: recording to vod/%s (budget left %d bytes)", stream.name, asset,
                 budget - used)  # fmt: skip
        asyncio.get_running_loop().call_soon(
            self.bus.emit, events.RecordingStarted(stream.name, asset, owner)
        )
        return RecordingTarget(f"vod/{asset}", budget - used, window)

    def unsupported(self, stream: LiveStream, why: str) -> None:
        """``stream`` would be recorded but cannot be (``why``): say so, record nothing."""
        self.refused.pop(stream.name, None)
        self.live.pop(stream.name, None)
        if self.settings.enabled and self.keys.records(stream.name):
            self.refused[stream.name] = f"not recorded: {why}"
            log.warning("stream %s: not recorded: %s", stream.name, why)

    def _segment_bytes(self) -> int:
        """About one segment of every rendition at the ladder's nominal bitrates: a budget
        with less room left than that would record nothing."""
        transcode = self.config.transcode
        kbps = sum(k for _, k in transcode.ladder) + transcode.audio_kbps
        return int(kbps * 1000 / 8 * transcode.segment_duration)

    def watch(
        self, stream: LiveStream, sink: PacketSink, finished: Callable[[], Awaitable[object]]
    ) -> PacketSink:
        """``sink`` (the transcoder recording ``stream``), finishing the recording once
        ``finished()`` returns after the stream ended."""
        row = self.live.get(stream.name)
        if row is None:
            return sink
        return _FinishAfterEnd(sink, lambda: self._spawn(self._finish(row, finished)))

    def abandon(self, stream: LiveStream) -> None:
        """The transcoder could not start: the recording never began."""
        row = self.live.pop(stream.name, None)
        if row is not None:
            self.db.delete(row.asset)
            self._jobs().delete(row.asset)

    async def _finish(self, row: RecordingRow, finished: Callable[[], Awaitable[object]]) -> None:
        await finished()
        prefix = f"vod/{row.asset}"
        try:
            result = await self._in_pool(record_assets.finish_recording, prefix)
        except RecordingError as exc:
            log.info("recording %s of %s: %s; discarded", row.asset, row.stream, exc)
            await self._in_pool(record_assets.discard_index, prefix)
            self._jobs().delete(row.asset)
            self.db.delete(row.asset)
            self.bus.emit(events.RecordingReady(row.stream, None, 0.0, str(exc)))
            return
        except Exception as exc:
            # A worker killed (SIGTERM at shutdown, OOM) or a bug: the recorded segments
            # and index stay, the row stays unfinished, and the next start tries again.
            log.exception("recording %s of %s could not be finished", row.asset, row.stream)
            error = f"not finished ({type(exc).__name__}: {exc}); retried at the next start"
            self._jobs().update(row.asset, state=jobs_db.FAILED, error=error)
            return
        self._jobs().update(
            row.asset,
            state=jobs_db.READY,
            progress=100.0,
            duration=result.duration,
            renditions=list(result.renditions),
            length=result.bytes,
        )
        self.db.end(row.asset, result.stopped)
        row.ended, row.reason = time.time(), result.stopped
        log.info("recording %s of %s ready: %.1f s, %d bytes%s", row.asset, row.stream,
                 result.duration, result.bytes,
                 f" ({result.stopped})" if result.stopped else "")  # fmt: skip
        self.bus.emit(events.RecordingReady(row.stream, row.asset, result.duration, result.stopped))
        await self._images(row.asset)

    async def _images(self, asset: str, only_missing: bool = False) -> None:
        poster = f"vod/{asset}/poster.jpg"
        if only_missing and (await asyncio.to_thread(self.vod.store.get, poster)) is not None:
            return
        try:
            await self._in_pool(record_assets.make_images, f"vod/{asset}")
        except Exception as exc:
            # The asset plays without them; its poster URL answers 404.
            log.warning("recording %s: no poster/thumbnails: %s", asset, exc)

    # ---- stream info -------------------------------------------------------------------

    def stream_info(self, name: str) -> dict[str, Any] | None:
        """``"recording"`` of GET /api/streams/NAME: the current or latest recording."""
        if name in self.refused:
            return {"state": "refused", "reason": self.refused[name], "asset": None}
        row = self.live.get(name)
        if row is None:
            return None
        job = self._job(row.asset)
        state = job.state if job is not None else "deleted"
        recorded = self._recorded_bytes(row.asset) if state == jobs_db.RECORDING else None
        return {
            "state": state,
            "asset": row.asset,
            "bytes": recorded if recorded is not None else (job.length if job else 0),
            "reason": row.reason or self._status.get(row.asset, {}).get("reason"),
        }

    def origin_of(self, asset: str) -> dict[str, Any]:
        """What ``GET /api/vod`` says of where an asset came from."""
        rows = self.db.of_assets([asset])
        if not rows:
            return {"source": "upload"}
        row = rows[0]
        source = "clip" if row.kind == CLIP else "recording"
        return {"source": source, "stream": row.stream, "parent": row.parent,
                "reason": row.reason}  # fmt: skip

    def catalogue(self, limit: int = 24) -> list[ListedAsset]:
        """The newest ready assets for the landing page (recordings marked as such)."""
        if self.vod.jobs is None:
            return []
        ready = [j for j in self.vod.jobs.all() if j.state == jobs_db.READY][-limit:]
        recorded = {row.asset for row in self.db.of_assets([j.id for j in ready])}
        return [
            ListedAsset(j.id, j.filename or j.id, j.duration, j.id in recorded)
            for j in reversed(ready)
        ]

    # ---- clips -----------------------------------------------------------------------

    def _source(self, name: str) -> RecordingRow | None:
        """The stream's running recording, else its latest finished one."""
        if (row := self.live.get(name)) is not None:
            job = self._job(row.asset)
            if job is not None and job.state in (jobs_db.RECORDING, jobs_db.READY):
                return row
        for row in reversed(self.db.of_stream(name)):
            job = self._job(row.asset)
            if row.kind == LIVE and job is not None and job.state == jobs_db.READY:
                return row
        return None

    async def create_clip(self, request: Request) -> Response:
        # The owner's API key, an admin key, or one of the owner's stream keys.
        principal = self.api.principal(request, stream_keys=True)
        name = request.path_params["name"]
        try:
            validate_stream_name(name)
        except InvalidName as exc:
            raise ApiError(404, str(exc)) from None
        body = await _json_object(request)
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise ApiError(400, "'seconds' must be a number")
        if not math.isfinite(seconds) or seconds <= 0 or seconds > self.settings.max_clip:
            raise ApiError(
                422,
                f"'seconds' must be in (0, {self.settings.max_clip:g}]",
                reason="out_of_range",
            )
        source = self._source(name)
        owner = source.owner if source is not None else self.keys.owner_of(name)
        if owner is not None and not principal.may_manage(owner):
            raise ApiError(403, f"stream {name!r} is not yours")
        if source is None:
            why = "its key does not record (--no-record)" if owner and not self.keys.records(
                name) else "nothing recorded yet"  # fmt: skip
            raise ApiError(404, f"stream {name!r} has no recording: {why}")
        prefix = f"vod/{source.asset}"
        try:
            start, end, size = await self._in_pool(record_assets.plan_clip, prefix, float(seconds))
        except RecordingError as exc:
            raise ApiError(422, str(exc), reason="out_of_range") from None
        used, budget = self.used(source.owner), self.budget
        if used + size > budget:
            raise ApiError(
                507,
                f"disk budget of {source.owner!r} is full: the clip needs {size} bytes, "
                f"{max(0, budget - used)} left",
                reason="budget",
            )
        asset = secrets.token_hex(8)
        jobs = self._jobs()
        jobs.create(asset, source.owner, f"{name} clip {seconds:g} s", size)
        jobs.update(asset, state=jobs_db.TRANSCODING)
        policy = self.access.policy(prefix)
        self.access.set_policy(f"vod/{asset}", policy.access, source.owner)
        row = RecordingRow(asset, name, source.owner, CLIP, source.asset, time.time(), time.time())
        self.db.add(row)
        try:
            result = await self._in_pool(record_assets.cut_clip, prefix, f"vod/{asset}", start,
                                         end)  # fmt: skip
        except Exception as exc:
            await self._in_pool(record_assets.discard_index, f"vod/{asset}")
            jobs.delete(asset)
            self.db.delete(asset)
            if isinstance(exc, RecordingError):
                raise ApiError(422, str(exc), reason="out_of_range") from None
            raise
        jobs.update(
            asset,
            state=jobs_db.READY,
            progress=100.0,
            duration=result.duration,
            renditions=list(result.renditions),
            length=result.bytes,
        )
        log.info("clip %s of %s (%s): %.1f s from %.1f s", asset, name, source.asset,
                 result.duration, start)  # fmt: skip
        self.bus.emit(events.ClipReady(name, asset, source.asset, result.duration))
        self._spawn(self._images(asset))
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "id": asset,
                "stream": name,
                "source": source.asset,
                "start": round(start, 3),
                "duration": result.duration,
                "renditions": list(result.renditions),
                "playback": vod_urls(base, asset),
            },
            status_code=201,
            headers={"Location": f"{base}/api/vod/{asset}"},
        )

    async def list_recordings(self, request: Request) -> Response:
        name = request.path_params["name"]
        items = []
        for row in self.db.of_stream(name):
            job = self._job(row.asset)
            if job is None:
                continue  # deleted
            items.append({**row.to_json(), "state": job.state, "duration": job.duration,
                          "bytes": job.length})  # fmt: skip
        return JSONResponse({"stream": name, "recordings": items})

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/streams/{name}/clips", _wrap(self.create_clip), methods=["POST"]),
            Route("/api/streams/{name}/recordings", _wrap(self.list_recordings), methods=["GET"]),
        ]
