"""VOD in the origin: tus 1.0 uploads, the persisted job queue and the job runner.

The runner is one asyncio task; every CPU step (probe, chunk transcodes, audio, images)
runs in a process pool, never on the event loop. Several jobs share the pool through a
fair queue (origin/vod_scheduler.py): owners take turns, and no job keeps every worker
while another waits; a job alone still gets them all, so a single upload is ready sooner.

Uploads are bounded before they cost anything: per-owner quotas (bytes kept, jobs not
finished) at creation, the container headers checked against the probe limits when the
last byte arrives (422 with the reason), the full probe (timestamps against frames) before
any chunk is planned. DELETE cancels a job at any stage: its queued work is dropped, what
a worker is running is discarded when it ends, and nothing is left to resume.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import aiofiles
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshcast.bodies import BodyTimeout, stream_body
from meshcast.config import OriginConfig
from meshcast.events import EventBus, VodFailed, VodProgress, VodReady
from meshcast.http import json_error
from meshcast.keys import API_KIND, KeyRejected, KeyStore
from meshcast.lifeline import kill_pool, worker_pool
from meshcast.logs import setup_logging
from meshcast.paths import vod_urls
from meshcast.store import LocalStore, SegmentStore
from meshcast.tus import (
    OFFSET_CONTENT_TYPE,
    TUS_EXTENSIONS,
    TUS_VERSION,
    TusError,
    check_resumable,
    filename_from_metadata,
    parse_metadata,
    parse_non_negative,
)
from origin import vod_jobs as jobs_db
from origin.vod_jobs import Job, JobStore
from origin.vod_scheduler import FairQueue, Task
from transcoder import vod_transcode as vod
from transcoder.encoders import EncoderUnavailable

log = logging.getLogger(__name__)

AUDIO_PART: Final = -1
IMAGES_PART: Final = -2
PROBE_PART: Final = -3  # the job's first task: probe and plan (its result is not saved)
# Share of the progress bar the transcode itself takes; manifests take the rest.
_TRANSCODE_SHARE: Final = 99.0


def _worker_init(log_level: int) -> None:
    setup_logging(logging.getLevelName(log_level))


@dataclass
class _Active:
    """A job being transcoded: what its probe found and which parts are done."""

    job: Job
    info: vod.SourceInfo | None = None
    chunks: list[vod.ChunkSpec] = field(default_factory=list)
    total: int = 0  # parts to make (0 until probed)
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    segment_duration: Fraction = Fraction(2)


class VodService:
    def __init__(
        self,
        config: OriginConfig,
        keys: KeyStore,
        bus: EventBus,
        store: SegmentStore | None = None,
        on_created: Callable[[str, str], object] | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        self.bus = bus
        # (asset id, owner) of each new upload: the access store records the owner, so
        # catalogue (SVOD) tokens and API keys of that creator cover the asset.
        self._on_created = on_created
        # Set by the origin: {"source": "recording"|"clip", "stream": NAME, …} of an asset
        # that came from a live stream (origin/recordings.py), else {"source": "upload"}.
        self.origin_of: Callable[[str], dict[str, Any]] | None = None
        self.root = config.data_dir / "vod"
        self.uploads = self.root / "uploads"
        self.store: SegmentStore = store or LocalStore(config.data_dir)
        self.jobs: JobStore | None = None
        self.workers = config.vod.workers or os.cpu_count() or 1
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._probe_pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._queue_fair = FairQueue(self.workers)
        self._active: dict[str, _Active] = {}
        # Each running task, and the pool it runs in (a broken pool is replaced once).
        self._running: dict[asyncio.Future[Any], tuple[Task, Any]] = {}

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.jobs = JobStore(self.root / "jobs.sqlite")
        for job_id in self.jobs.requeue_interrupted():
            log.info("vod %s: transcode interrupted by a restart; resuming", job_id)
        self._task = asyncio.create_task(self._run(), name="vod-runner")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for future in self._running:
            future.cancel()
        if self._pool is not None:
            # Queued chunks are dropped; running ones finish (a chunk is seconds of work)
            # and are transcoded again after a restart, since they were not recorded.
            await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)
            self._pool = None
        if self._probe_pool is not None:
            kill_pool(self._probe_pool)
            self._probe_pool = None
        if self.jobs is not None:
            self.jobs.close()

    def _db(self) -> JobStore:
        assert self.jobs is not None, "VodService.start() not called"
        return self.jobs

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # Ctrl-C goes to the origin, which shuts the pool down; workers end with it.
            self._pool = worker_pool(self.workers, _worker_init, (logging.getLogger().level,))
        return self._pool

    async def _check_upload(self, job: Job) -> str | None:
        """Why a completed upload is refused (over the probe limits), None when it may be
        queued. The probe is demux-only; it runs in its own one-process pool with a
        timeout: an upload must not wait behind transcodes, nor hang on a hostile file.
        A probe that does not finish in time, or fails for another reason (not media,
        truncated), leaves the decision to the job's own probe, which says why."""
        if self._probe_pool is None:
            self._probe_pool = worker_pool(1, _worker_init, (logging.getLogger().level,))
        loop = asyncio.get_running_loop()
        path, limits = self.upload_path(job.id), self.config.vod.probe
        future = loop.run_in_executor(self._probe_pool, vod.probe, path, limits)
        try:
            await asyncio.wait_for(future, self.config.vod.probe_timeout)
        except vod.MediaRefused as exc:
            return str(exc)
        except vod.MediaError:
            return None  # not media, truncated…: the full probe says so in the job
        except (TimeoutError, BrokenProcessPool) as exc:
            log.warning("vod %s: upload probe failed (%r); the job's probe decides", job.id, exc)
            kill_pool(self._probe_pool)
            self._probe_pool = None
        return None

    # ---- API ------------------------------------------------------------------------

    def upload_path(self, job_id: str) -> Path:
        return self.uploads / job_id

    def job_json(self, job: Job, base: str) -> dict[str, Any]:
        urls = vod_urls(base, job.id)
        ready = job.state == jobs_db.READY
        return {
            "id": job.id,
            "owner": job.owner,
            "state": job.state,
            "progress": round(job.progress, 1),
            "error": job.error,
            "filename": job.filename,
            "size": job.length,
            "uploaded": self._offset(job.id),
            "renditions": job.renditions,
            "duration": job.duration,
            "poster": urls["poster"] if ready else None,
            "thumbnails": urls["thumbnails"] if ready else None,
            "playback": {k: urls[k] for k in ("hls", "dash", "player")} if ready else None,
            # Where the asset came from: an upload, or a stream's recording or clip.
            **(self.origin_of(job.id) if self.origin_of else {"source": "upload"}),
        }

    def _offset(self, job_id: str) -> int:
        try:
            return self.upload_path(job_id).stat().st_size
        except FileNotFoundError:
            return 0

    def routes(self) -> list[Route]:
        return [
            Route("/api/vod", self._collection, methods=["GET", "POST", "OPTIONS"]),
            Route("/api/vod/{id}", self._status, methods=["GET"]),
            Route("/api/vod/{id}/upload", self._upload, methods=["HEAD", "PATCH", "DELETE"]),
        ]

    @staticmethod
    def _tus(response: Response) -> Response:
        response.headers["Tus-Resumable"] = TUS_VERSION
        return response

    def _tus_error(self, status: int, message: str) -> Response:
        response = json_error(status, message)
        if status == 412:
            response.headers["Tus-Version"] = TUS_VERSION
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="meshcast"'
        return self._tus(response)

    def _authenticate(self, request: Request) -> str:
        """A creator's API key (``meshcast keys create NAME --kind api``), or a stream key
        for creators without one, sent as a bearer token; returns the owner of what it
        uploads (the API key's NAME, the stream key's owner)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise TusError(401, "missing API key: send 'Authorization: Bearer KEY'")
        try:
            if token.startswith(f"{API_KIND}_"):
                return self.keys.verify(token, API_KIND)
            name = self.keys.verify(token)
        except KeyRejected as exc:
            raise TusError(401, f"API key rejected: {exc}") from None
        return self.keys.owner_of(name) or name

    async def _collection(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return self._tus(
                Response(
                    status_code=204,
                    headers={
                        "Tus-Version": TUS_VERSION,
                        "Tus-Extension": TUS_EXTENSIONS,
                        "Tus-Max-Size": str(self.config.vod.max_upload),
                    },
                )
            )
        base = str(request.base_url).rstrip("/")
        if request.method == "GET":
            return JSONResponse({"assets": [self.job_json(j, base) for j in self._db().all()]})
        try:
            owner = self._authenticate(request)
            check_resumable(request.headers.get("tus-resumable"))
            if "upload-defer-length" in request.headers:
                raise TusError(400, "Upload-Defer-Length is not supported: send Upload-Length")
            length = parse_non_negative("Upload-Length", request.headers.get("upload-length"))
            if length > self.config.vod.max_upload:
                raise TusError(413, f"upload of {length} bytes exceeds Tus-Max-Size")
            metadata = parse_metadata(request.headers.get("upload-metadata"))
        except TusError as exc:
            return self._tus_error(exc.status, exc.message)
        kept, unfinished = self._db().usage(owner)
        vod_config = self.config.vod
        if unfinished >= vod_config.max_owner_jobs:
            return self._tus_error(
                429,
                f"{unfinished} uploads of {owner!r} are not finished yet (limit "
                f"{vod_config.max_owner_jobs}): wait for them or delete some",
            )
        if kept + length > vod_config.max_owner_bytes:
            return self._tus_error(
                413,
                f"storage quota of {owner!r} exceeded: {kept} bytes kept + {length} > "
                f"{vod_config.max_owner_bytes}",
            )
        job_id = secrets.token_hex(8)
        self.upload_path(job_id).touch()
        job = self._db().create(job_id, owner, filename_from_metadata(metadata), length)
        if self._on_created is not None:
            self._on_created(job_id, owner)
        log.info("vod %s: upload of %d bytes by %s created", job_id, length, owner)
        if length == 0:
            self._queue(job)
        location = f"{base}/api/vod/{job_id}/upload"
        body = {"id": job_id, "upload": location, "status": f"{base}/api/vod/{job_id}"}
        return self._tus(JSONResponse(body, status_code=201, headers={"Location": location}))

    async def _status(self, request: Request) -> Response:
        job = self._db().get(request.path_params["id"])
        if job is None:
            return json_error(404, "no such VOD asset", id=request.path_params["id"])
        return JSONResponse(self.job_json(job, str(request.base_url).rstrip("/")))

    async def _upload(self, request: Request) -> Response:
        try:
            owner = self._authenticate(request)
            check_resumable(request.headers.get("tus-resumable"))
        except TusError as exc:
            return self._tus_error(exc.status, exc.message)
        job = self._db().get(request.path_params["id"])
        if job is None or job.owner != owner:
            # Someone else's upload is as good as absent: do not confirm that it exists.
            return self._tus_error(404, "no such upload")
        if request.method == "HEAD":
            return self._tus(
                Response(
                    headers={
                        "Upload-Offset": str(self._offset(job.id)),
                        "Upload-Length": str(job.length),
                        "Cache-Control": "no-store",
                    }
                )
            )
        if request.method == "DELETE":
            return await self._terminate(job)
        return await self._patch(request, job)

    async def _terminate(self, job: Job) -> Response:
        """tus termination, in any state: a queued or transcoding job is cancelled (its
        waiting work dropped, its running chunks discarded when they end)."""
        if job.id in self._active:
            self._forget(job.id)
            log.info("vod %s: cancelled while %s", job.id, job.state)
        self.upload_path(job.id).unlink(missing_ok=True)
        await asyncio.to_thread(self.store.clear, f"vod/{job.id}")
        self._db().delete(job.id)
        log.info("vod %s: deleted", job.id)
        return self._tus(Response(status_code=204))

    async def _patch(self, request: Request, job: Job) -> Response:
        try:
            if request.headers.get("content-type", "").split(";")[0].strip() != OFFSET_CONTENT_TYPE:
                raise TusError(415, f"PATCH needs Content-Type: {OFFSET_CONTENT_TYPE}")
            offset = parse_non_negative("Upload-Offset", request.headers.get("upload-offset"))
        except TusError as exc:
            return self._tus_error(exc.status, exc.message)
        lock = self._locks.setdefault(job.id, asyncio.Lock())
        if lock.locked():
            return self._tus_error(409, "another PATCH to this upload is in progress")
        async with lock:
            current = self._offset(job.id)
            if job.state != jobs_db.UPLOADING:
                return self._tus_error(409, f"upload already complete (state {job.state})")
            if offset != current:
                response = self._tus_error(409, f"Upload-Offset {offset} != current {current}")
                response.headers["Upload-Offset"] = str(current)
                return response
            remaining = job.length - current
            too_long = False
            slow: BodyTimeout | None = None
            # Streamed to disk chunk by chunk: an upload is never held in memory, and the
            # bytes that arrived before a dropped connection stay (tus resumes after them).
            async with aiofiles.open(self.upload_path(job.id), "ab") as f:
                try:
                    async for chunk in stream_body(request, self.config.vod.max_upload):
                        if len(chunk) > remaining:
                            too_long = True
                            break
                        await f.write(chunk)
                        remaining -= len(chunk)
                except ClientDisconnect:
                    log.info("vod %s: client went away at %d bytes", job.id, job.length - remaining)
                except BodyTimeout as exc:
                    slow = exc
            new_offset = job.length - remaining
            if too_long or slow is not None:
                status, reason = (
                    (408, slow.reason) if slow else (400, "body goes past Upload-Length")
                )
                response = self._tus_error(status, reason)
                response.headers["Upload-Offset"] = str(new_offset)
                response.headers["Connection"] = "close"
                self._locks.pop(job.id, None)
                return response
            refused = await self._check_upload(job) if remaining == 0 else None
            if refused is not None:
                self._fail(job, refused)
            elif remaining == 0:
                self._queue(job)
        self._locks.pop(job.id, None)
        if refused is not None:
            response = self._tus_error(422, refused)
            response.headers["Upload-Offset"] = str(new_offset)
            return response
        return self._tus(Response(status_code=204, headers={"Upload-Offset": str(new_offset)}))

    def _queue(self, job: Job) -> None:
        self._db().update(job.id, state=jobs_db.QUEUED, progress=0.0)
        self.bus.emit(VodProgress(job.id, jobs_db.QUEUED, 0.0))
        log.info("vod %s: upload complete (%d bytes), queued", job.id, job.length)
        self._wake.set()

    # ---- runner ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._admit()
            self._dispatch()
            wake = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait(
                    [*self._running, wake], timeout=5.0, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                wake.cancel()
            self._wake.clear()
            for future in [f for f in self._running if f.done()]:
                task, pool = self._running.pop(future)
                self._queue_fair.finished(task.job)
                await self._settle(task, future, pool)

    def _admit(self) -> None:
        """Queued jobs become active (probe first), up to ``max_active_jobs``; owners take
        turns here too, so one owner's backlog does not fill every active place."""
        room = self.config.vod.max_active_jobs - len(self._active)
        if room <= 0:
            return
        waiting = [j for j in self._db().queued() if j.id not in self._active]
        by_owner: dict[str, list[Job]] = {}
        for job in waiting:
            by_owner.setdefault(job.owner, []).append(job)
        active_per_owner: dict[str, int] = {}
        for active in self._active.values():
            active_per_owner[active.job.owner] = active_per_owner.get(active.job.owner, 0) + 1
        while room > 0 and by_owner:
            owner = min(
                by_owner, key=lambda o: (active_per_owner.get(o, 0), by_owner[o][0].updated)
            )
            job = by_owner[owner].pop(0)
            if not by_owner[owner]:
                del by_owner[owner]
            active_per_owner[owner] = active_per_owner.get(owner, 0) + 1
            room -= 1
            self._start(job)

    def _start(self, job: Job) -> None:
        self._db().update(job.id, state=jobs_db.TRANSCODING, error=None)
        self._active[job.id] = _Active(job)
        self._queue_fair.add_job(job.id, job.owner)
        args = (self.upload_path(job.id), self.config.vod.probe, self.config.transcode)
        self._queue_fair.push(Task(job.id, PROBE_PART, vod.prepare, args))

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while (task := self._queue_fair.next()) is not None:
            pool = self._executor()
            self._running[loop.run_in_executor(pool, task.fn, *task.args)] = (task, pool)

    async def _settle(self, task: Task, future: asyncio.Future[Any], pool: Any) -> None:
        active = self._active.get(task.job)
        if active is None or future.cancelled():
            return  # a cancelled or failed job: what its worker made is dropped
        job = active.job
        try:
            result = future.result()
            if task.part == PROBE_PART:
                await self._plan(active, result)
            else:
                prefix = f"vod/{job.id}"
                saved = await asyncio.to_thread(self._save_part, prefix, task.part, result)
                self._db().save_chunk(job.id, task.part, saved)
                active.done[task.part] = saved
            if active.total and len(active.done) >= active.total:
                await self._finish(active)
            elif active.total:
                self._progress(job, _TRANSCODE_SHARE * len(active.done) / active.total)
        except (vod.MediaError, EncoderUnavailable) as exc:
            self._forget(job.id)
            self._fail(job, str(exc))
        except BrokenProcessPool:
            # A worker died (crash, OOM kill, SIGTERM): every job with work in the pool
            # lost it. Each runs again (what it finished is kept) a few times at most.
            if self._pool is not None and self._pool is pool:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            self._crashed(job)
        except Exception as exc:
            log.exception("vod %s: transcode failed", job.id)
            self._forget(job.id)
            self._fail(job, f"internal error: {type(exc).__name__}: {exc}")

    async def _plan(self, active: _Active, prepared: vod.Prepared) -> None:
        job, info = active.job, prepared.info
        source, db = str(self.upload_path(job.id)), self._db()
        prefix = f"vod/{job.id}"
        segment_duration = Fraction(self.config.transcode.segment_duration).limit_denominator(1000)
        chunks = vod.plan_chunks(info, segment_duration, self.config.vod.chunk_segments)
        active.done = db.chunks(job.id)
        if not active.done:
            await asyncio.to_thread(self.store.clear, prefix)
        log.info(
            "vod %s: %dx%d %s %.2f s -> %s, %d chunks (%d done before)",
            job.id, info.width, info.height, info.fps, info.duration,
            ", ".join(r.name for r in prepared.rungs), len(chunks), len(active.done),
        )  # fmt: skip
        parts: list[tuple[int, Callable[..., Any], tuple[Any, ...]]] = []
        for chunk in chunks:
            chunk_job = vod.ChunkJob(
                source, info, chunk, prepared.rungs, prepared.backend, segment_duration
            )
            parts.append((chunk.index, vod.transcode_chunk, (chunk_job,)))
        if info.has_audio:
            audio_job = vod.AudioJob(
                source, info, segment_duration, self.config.transcode.audio_kbps
            )
            parts.append((AUDIO_PART, vod.transcode_audio, (audio_job,)))
        parts.append((IMAGES_PART, vod.make_images, (source, info)))
        active.info, active.chunks, active.total = info, chunks, len(parts)
        active.segment_duration = segment_duration
        for part, fn, args in parts:
            if part not in active.done:
                self._queue_fair.push(Task(job.id, part, fn, args))

    async def _finish(self, active: _Active) -> None:
        job, info = active.job, active.info
        assert info is not None
        self._forget(job.id)
        parts = [active.done[c.index] for c in active.chunks]
        audio = active.done.get(AUDIO_PART) or None
        renditions = await asyncio.to_thread(
            vod.write_manifests,
            self.store,
            f"vod/{job.id}",
            info,
            parts,
            audio,
            active.segment_duration,
        )
        if self._db().get(job.id) is None:
            return  # deleted while the manifests were written
        self._db().update(
            job.id,
            state=jobs_db.READY,
            progress=100.0,
            duration=round(info.duration, 3),
            renditions=renditions,
        )
        self.bus.emit(VodReady(job.id, renditions, info.duration))
        log.info("vod %s: ready (%s)", job.id, ", ".join(renditions))

    def _forget(self, job_id: str) -> None:
        """Stop scheduling a job: waiting tasks dropped, queued futures cancelled (running
        ones end on their own and are ignored)."""
        self._active.pop(job_id, None)
        self._queue_fair.remove_job(job_id)
        for future, (task, _) in self._running.items():
            if task.job == job_id:
                future.cancel()
        self._wake.set()

    def _crashed(self, job: Job) -> None:
        crashes = job.crashes + 1
        self._forget(job.id)
        if crashes > self.config.vod.max_crashes:
            self._db().update(job.id, crashes=crashes)
            self._fail(job, f"transcode worker crashed {crashes} times on this upload")
            return
        log.warning("vod %s: a transcode worker died (%d); queued again", job.id, crashes)
        self._db().update(job.id, state=jobs_db.QUEUED, crashes=crashes)

    def _fail(self, job: Job, error: str) -> None:
        log.warning("vod %s: failed: %s", job.id, error)
        self._db().update(job.id, state=jobs_db.FAILED, error=error)
        self.bus.emit(VodFailed(job.id, error))

    def _progress(self, job: Job, progress: float) -> None:
        self._db().update(job.id, progress=progress)
        self.bus.emit(VodProgress(job.id, jobs_db.TRANSCODING, progress))

    def _save_part(self, prefix: str, index: int, result: Any) -> dict[str, Any]:
        """Write a finished part's files to the store; returns what the job DB keeps."""
        if index == IMAGES_PART:
            assert isinstance(result, vod.Images)
            self.store.put(f"{prefix}/poster.jpg", result.poster)
            self.store.put(f"{prefix}/thumbnails.jpg", result.sprite)
            self.store.put(f"{prefix}/thumbnails.vtt", result.vtt)
            return {"images": True}
        if index == AUDIO_PART:
            if result is None:
                return {}
            assert isinstance(result, vod.RenditionOutput)
            vod.write_output(self.store, prefix, result)
            return vod.rendition_json(result)
        assert isinstance(result, vod.ChunkResult)
        for output in result.renditions:
            vod.write_output(self.store, prefix, output)
        return {"renditions": [vod.rendition_json(o) for o in result.renditions]}
