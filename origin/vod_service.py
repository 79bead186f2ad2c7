"""VOD in the origin: tus 1.0 uploads, the persisted job queue and the job runner.

The runner is one asyncio task; every CPU step (probe, chunk transcodes, audio, images)
runs in a process pool, never on the event loop. One job at a time gets the whole pool:
its chunks run in parallel, so a single upload is ready sooner than with one job per core.
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
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, TypeVar

import aiofiles
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshcast.config import OriginConfig
from meshcast.events import EventBus, VodFailed, VodProgress, VodReady
from meshcast.http import json_error
from meshcast.keys import API_KIND, KeyRejected, KeyStore
from meshcast.paths import vod_urls
from meshcast.pools import process_pool
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
from transcoder import vod_transcode as vod
from transcoder.encoders import EncoderUnavailable

log = logging.getLogger(__name__)

AUDIO_PART: Final = -1
IMAGES_PART: Final = -2
# Share of the progress bar the transcode itself takes; manifests take the rest.
_TRANSCODE_SHARE: Final = 99.0

T = TypeVar("T")


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
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}

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
        if self._pool is not None:
            # Queued chunks are dropped; running ones finish (a chunk is seconds of work)
            # and are transcoded again after a restart, since they were not recorded.
            await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)
            self._pool = None
        if self.jobs is not None:
            self.jobs.close()

    def _db(self) -> JobStore:
        assert self.jobs is not None, "VodService.start() not called"
        return self.jobs

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = process_pool(self.workers)
        return self._pool

    async def _in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), fn, *args)

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
        if job.state in (jobs_db.QUEUED, jobs_db.TRANSCODING, jobs_db.RECORDING):
            return self._tus_error(409, f"cannot delete while {job.state}")
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
            # Streamed to disk chunk by chunk: an upload is never held in memory, and the
            # bytes that arrived before a dropped connection stay (tus resumes after them).
            async with aiofiles.open(self.upload_path(job.id), "ab") as f:
                try:
                    async for chunk in request.stream():
                        if len(chunk) > remaining:
                            too_long = True
                            break
                        await f.write(chunk)
                        remaining -= len(chunk)
                except ClientDisconnect:
                    log.info("vod %s: client went away at %d bytes", job.id, job.length - remaining)
            new_offset = job.length - remaining
            if too_long:
                response = self._tus_error(400, "body goes past Upload-Length")
                response.headers["Upload-Offset"] = str(new_offset)
                return response
            if remaining == 0:
                self._queue(job)
        self._locks.pop(job.id, None)
        return self._tus(Response(status_code=204, headers={"Upload-Offset": str(new_offset)}))

    def _queue(self, job: Job) -> None:
        self._db().update(job.id, state=jobs_db.QUEUED, progress=0.0)
        self.bus.emit(VodProgress(job.id, jobs_db.QUEUED, 0.0))
        log.info("vod %s: upload complete (%d bytes), queued", job.id, job.length)
        self._wake.set()

    # ---- runner ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            job = self._db().next_queued()
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 5.0)
                continue
            try:
                await self._transcode(job)
            except asyncio.CancelledError:
                raise
            except vod.MediaError as exc:
                self._fail(job, str(exc))
            except EncoderUnavailable as exc:
                self._fail(job, str(exc))
            except BrokenProcessPool as exc:
                # A worker died (crash, OOM kill): this job fails, the next gets a new pool.
                self._pool = None
                self._fail(job, f"transcode worker crashed: {exc}")
            except Exception as exc:
                log.exception("vod %s: transcode failed", job.id)
                self._fail(job, f"internal error: {type(exc).__name__}: {exc}")

    def _fail(self, job: Job, error: str) -> None:
        log.warning("vod %s: failed: %s", job.id, error)
        self._db().update(job.id, state=jobs_db.FAILED, error=error)
        self.bus.emit(VodFailed(job.id, error))

    def _progress(self, job: Job, progress: float) -> None:
        self._db().update(job.id, progress=progress)
        self.bus.emit(VodProgress(job.id, jobs_db.TRANSCODING, progress))

    async def _transcode(self, job: Job) -> None:
        db, source = self._db(), str(self.upload_path(job.id))
        prefix = f"vod/{job.id}"
        db.update(job.id, state=jobs_db.TRANSCODING, error=None)
        info = await self._in_pool(vod.probe, Path(source))
        backend, rungs = await self._in_pool(vod.plan_rungs, info, self.config.transcode)
        segment_duration = Fraction(self.config.transcode.segment_duration).limit_denominator(1000)
        chunks = vod.plan_chunks(info, segment_duration, self.config.vod.chunk_segments)
        done = db.chunks(job.id)
        if not done:
            await asyncio.to_thread(self.store.clear, prefix)
        log.info(
            "vod %s: %dx%d %s %.2f s -> %s, %d chunks (%d done before)",
            job.id, info.width, info.height, info.fps, info.duration,
            ", ".join(r.name for r in rungs), len(chunks), len(done),
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        pool = self._executor()
        pending: dict[asyncio.Future[Any], int] = {}
        for chunk in chunks:
            if chunk.index not in done:
                chunk_job = vod.ChunkJob(source, info, chunk, rungs, backend, segment_duration)
                pending[loop.run_in_executor(pool, vod.transcode_chunk, chunk_job)] = chunk.index
        if info.has_audio and AUDIO_PART not in done:
            audio_job = vod.AudioJob(
                source, info, segment_duration, self.config.transcode.audio_kbps
            )
            pending[loop.run_in_executor(pool, vod.transcode_audio, audio_job)] = AUDIO_PART
        if IMAGES_PART not in done:
            pending[loop.run_in_executor(pool, vod.make_images, source, info)] = IMAGES_PART
        total = len(chunks) + (1 if info.has_audio else 0) + 1
        try:
            while pending:
                finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in finished:
                    index = pending.pop(future)
                    done[index] = await asyncio.to_thread(
                        self._save_part, prefix, index, future.result()
                    )
                    db.save_chunk(job.id, index, done[index])
                self._progress(job, _TRANSCODE_SHARE * len(done) / total)
        finally:
            for future in pending:
                future.cancel()
        parts = [done[c.index] for c in chunks]
        audio = done.get(AUDIO_PART) or None
        renditions = await asyncio.to_thread(
            vod.write_manifests, self.store, prefix, info, parts, audio, segment_duration
        )
        db.update(
            job.id,
            state=jobs_db.READY,
            progress=100.0,
            duration=round(info.duration, 3),
            renditions=renditions,
        )
        self.bus.emit(VodReady(job.id, renditions, info.duration))
        log.info("vod %s: ready (%s)", job.id, ", ".join(renditions))

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
