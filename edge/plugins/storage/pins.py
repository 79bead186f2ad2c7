"""Content-addressed pinning: ``POST /api/pins`` → CIDv1, ``GET /ipfs/CID`` through the cache.

``POST /api/pins`` takes the content as the raw body, as a multipart form field ``file``
(``curl -F file=@x``), or JSON ``{"bucket", "key"}`` naming an S3 object to pin in place.

A CID here is CIDv1, codec raw (0x55), multihash sha2-256 of the whole content, multibase
base32 lower ("b…"): exactly what ``multiformats`` (and ``ipfs add --raw-leaves
--cid-version 1`` for content within one block) compute. Larger content keeps that single
raw CID rather than a UnixFS DAG, so CIDs of big files differ from ``ipfs add``'s (see
README). The content itself is stored as replicated chunks like any S3 object.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from edge.cache import CachedObject
from edge.plugins.host import EdgeHost
from edge.plugins.storage.blobs import NS_OBJECT, NS_PIN, Manifest
from edge.plugins.storage.cluster import Cluster, Unavailable
from edge.plugins.storage.s3api import write_chunks
from edge.plugins.storage.s3xml import S3Error
from meshcast.bodies import read_json, stream_body
from meshcast.cid import BadCid, cid_digest, cid_for
from meshcast.config import StorageConfig
from meshcast.http import json_error
from meshcast.keys import KeyRejected, KeyStore
from meshcast.refused import Refused


async def _read_upload(upload: UploadFile, size: int) -> AsyncIterator[bytes]:
    while piece := await upload.read(size):
        yield piece


class Pins:
    def __init__(
        self, edge: EdgeHost, cluster: Cluster, keys: KeyStore, config: StorageConfig
    ) -> None:
        self.edge = edge
        self.cluster = cluster
        self.keys = keys
        self.config = config

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/pins", self.pins, methods=["GET", "POST"]),
            Route("/api/pins/{cid}", self.pin, methods=["GET", "DELETE"]),
            Route("/ipfs/{cid}", self.ipfs, methods=["GET", "HEAD"]),
        ]

    def _authorized(self, request: Request) -> bool:
        """Writes need an S3 key: ``Authorization: Bearer ACCESS_KEY_ID:SECRET``."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        access_key, _, secret = credentials.partition(":")
        if scheme.lower() != "bearer" or not secret:
            return False
        try:
            _, expected = self.keys.s3_secret(access_key)
        except KeyRejected:
            return False
        return hmac.compare_digest(expected, secret)

    @staticmethod
    def _summary(m: Manifest) -> dict[str, object]:
        return {
            "cid": m.key,
            "size": m.size,
            "name": m.meta.get("name", ""),
            "content_type": m.content_type,
            "created": m.version / 1e9,
            "url": f"/ipfs/{m.key}",
        }

    async def pins(self, request: Request) -> Response:
        try:
            if request.method == "GET":
                found = await self.cluster.list_manifests(NS_PIN, "", "")
                return JSONResponse({"pins": [self._summary(m) for m in found]})
            if not self._authorized(request):
                return json_error(401, "pinning needs an S3 key: Authorization: Bearer AKID:SECRET")
            if request.headers.get("content-type", "").startswith("application/json"):
                manifest = await self._pin_object(request)
            else:
                manifest = await self._pin_body(request)
        except Unavailable as exc:
            return json_error(503, str(exc))
        except ClientDisconnect:
            return Response(status_code=400, headers={"Connection": "close"})
        except S3Error as exc:
            return json_error(exc.status, str(exc))
        await self.cluster.put_manifest(manifest)
        return JSONResponse(self._summary(manifest), 201)

    async def _pin_body(self, request: Request) -> Manifest:
        """The body is the content, or a multipart form whose ``file`` field is."""
        name = request.query_params.get("name", "")
        content_type = request.headers.get("content-type", "application/octet-stream")
        form = None
        body: AsyncIterator[bytes] = stream_body(request, self.config.max_object + 1024 * 1024)
        if content_type.startswith("multipart/form-data"):
            # Starlette spools the upload to a temporary file past 1 MiB, never all in memory.
            form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                await form.close()
                raise S3Error("InvalidArgument", "the form needs a 'file' field")
            name = name or upload.filename or ""
            content_type = upload.content_type or "application/octet-stream"
            body = _read_upload(upload, self.config.chunk_size)
        try:
            written = await write_chunks(
                self.cluster, body, self.config.chunk_size, self.config.max_object
            )
        finally:
            if form is not None:
                await form.close()
        return Manifest(
            NS_PIN,
            "",
            cid_for(bytes.fromhex(written.sha256)),
            time.time_ns(),
            self.cluster.self_url,
            size=written.size,
            etag=written.md5,
            content_type=content_type,
            chunks=written.chunks,
            meta={"name": name} if name else {},
            sha256=written.sha256,
        )

    async def _pin_object(self, request: Request) -> Manifest:
        """Pin an existing S3 object: its chunks are shared, nothing is copied."""
        try:
            ref = await read_json(request, 64 * 1024)
            bucket, key = str(ref["bucket"]), str(ref["key"])
        except (Refused, KeyError, TypeError):
            raise S3Error("InvalidArgument", 'body must be {"bucket": …, "key": …}') from None
        obj = await self.cluster.get_manifest(Manifest(NS_OBJECT, bucket, key, 0, ""))
        if obj is None:
            raise S3Error("NoSuchKey", f"no object {key!r} in bucket {bucket!r}")
        sha256 = obj.sha256
        if not sha256:  # multipart objects: hash the content once
            hasher = hashlib.sha256()
            async for piece in self.cluster.read(obj, 0, obj.size):
                await asyncio.to_thread(hasher.update, piece)
            sha256 = hasher.hexdigest()
        return Manifest(
            NS_PIN,
            "",
            cid_for(bytes.fromhex(sha256)),
            time.time_ns(),
            self.cluster.self_url,
            size=obj.size,
            etag=obj.etag,
            content_type=obj.content_type,
            chunks=obj.chunks,
            meta={"name": key, "bucket": bucket},
            sha256=sha256,
        )

    async def _find(self, cid: str) -> Manifest | None:
        return await self.cluster.get_manifest(Manifest(NS_PIN, "", cid, 0, ""))

    async def content(self, cid: str, limit: int) -> bytes | None:
        """The whole pinned content, verified against its CID; None if not pinned.
        ValueError when it is over ``limit`` bytes or does not match its CID."""
        digest = cid_digest(cid)
        found = await self._find(cid)
        if found is None:
            return None
        if found.size > limit:
            raise ValueError(f"{cid} is {found.size} bytes, over the {limit} byte limit")
        body = await self._read_verified(found, digest)
        if body is None:
            raise ValueError(f"content of {cid} does not match its CID")
        return body

    async def _read_verified(self, pin: Manifest, digest: bytes) -> bytes | None:
        """The whole content of ``pin``; None when it does not hash to ``digest``."""
        body = b"".join([piece async for piece in self.cluster.read(pin, 0, pin.size)])
        actual = await asyncio.to_thread(lambda: hashlib.sha256(body).digest())
        return body if actual == digest else None

    async def pin(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        try:
            cid_digest(cid)
        except BadCid as exc:
            return json_error(400, str(exc), cid=cid)
        if request.method == "GET":
            found = await self._find(cid)
            if found is None:
                return json_error(404, "not pinned", cid=cid)
            return JSONResponse(self._summary(found))
        if not self._authorized(request):
            return json_error(401, "unpinning needs an S3 key: Authorization: Bearer AKID:SECRET")
        found = await self._find(cid)
        if found is None:
            return json_error(404, "not pinned", cid=cid)
        tombstone = Manifest(NS_PIN, "", cid, time.time_ns(), self.cluster.self_url, deleted=True)
        await self.cluster.put_manifest(tombstone)
        # Other edges keep serving cached copies until evicted: CIDs are immutable.
        self.edge.forget(request.url.path)
        return Response(status_code=204)

    async def ipfs(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        try:
            digest = cid_digest(cid)
        except BadCid as exc:
            return json_error(400, str(exc), cid=cid)
        key = request.url.path
        cached = self.edge.cached(key)
        if cached is not None:
            return self.edge.respond(request, cached, "HIT")
        found = await self._find(cid)
        if found is None:
            return json_error(404, "not pinned", cid=cid)
        try:
            if found.size <= self.config.ipfs_cache_max:
                return await self._fill(request, found, digest)
            return await self._stream(request, found)
        except Unavailable as exc:
            return json_error(503, str(exc), cid=cid)

    async def _fill(self, request: Request, pin: Manifest, digest: bytes) -> Response:
        """Load, verify against the CID, cache (immutable), answer like a cache MISS."""
        body = await self._read_verified(pin, digest)
        if body is None:
            # Every chunk passed its own hash, so the manifest itself is wrong: never serve.
            return json_error(502, "content does not match its CID", cid=pin.key)
        now = time.time()
        obj = CachedObject(
            key=request.url.path,
            size=len(body),
            content_type=pin.content_type,
            etag=f'"{pin.key}"',
            last_modified=None,
            stored_at=now,
            expires_at=None,
            body=body,
        )
        self.edge.store(obj)
        return self.edge.respond(request, obj, "MISS")

    async def _stream(self, request: Request, pin: Manifest) -> Response:
        """Too big for the cache: stream chunk by chunk (each verified by its own hash)."""
        headers = {
            "Content-Type": pin.content_type,
            "Content-Length": str(pin.size),
            "ETag": f'"{pin.key}"',
            "Cache-Control": "public, max-age=31536000, immutable",
            "X-Cache": "MISS",
        }
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers)

        async def body() -> AsyncIterator[bytes]:
            async for piece in self.cluster.read(pin, 0, pin.size):
                yield piece

        return StreamingResponse(body(), 200, headers=headers)
