"""Replication of chunks and manifests over the edge ring, and the repair loop.

Placement: the ``k`` live nodes with the highest rendezvous score for a chunk's digest (or a
manifest's id) hold it. A write is acknowledged once every live owner has it on disk (at
least one); the repair loop later restores ``k`` copies when owners change (a node died or
came back). Bucket records go to every node, so bucket checks never leave the edge.

Peers talk over ``/_storage/…`` routes guarded by a secret shared through the data
directory (``storage-peer.secret``); nodes on other hosts need a copy of that file.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, Final

import httpx
from prometheus_client import CollectorRegistry, Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.plugins.storage.blobs import NS_BUCKET, BlobStore, CorruptChunk, Manifest
from edge.ring import PeerRing
from meshcast.bodies import read_body, read_json

log = logging.getLogger(__name__)

SECRET_FILE: Final = "storage-peer.secret"  # noqa: S105  (a file name)
SECRET_HEADER: Final = "X-Meshcast-Storage-Secret"  # noqa: S105  (a header name)
_TIMEOUT: Final = httpx.Timeout(30.0, connect=2.0)
# A peer's chunk or inventory; the edge's body guard holds them to the configured chunk size.
MAX_PEER_BODY: Final = 65 * 1024 * 1024


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Unavailable(Exception):
    """No replica could be written or read (every owner is down or lost it)."""


def peer_secret(data_dir: Path) -> str:
    """The ring's shared secret, created on first use (0600, never overwritten)."""
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = path.open("x")
    except FileExistsError:
        return path.read_text().strip()
    with fd:
        path.chmod(0o600)
        fd.write(secrets.token_hex(32))
    return path.read_text().strip()


class ChunkCache:
    """Byte-bounded LRU of verified chunks (hot objects skip the disk read and re-hash)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def get(self, digest: str) -> bytes | None:
        data = self._entries.get(digest)
        if data is not None:
            self._entries.move_to_end(digest)
        return data

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > self.capacity or digest in self._entries:
            return
        self._entries[digest] = data
        self.used += len(data)
        while self.used > self.capacity:
            _, old = self._entries.popitem(last=False)
            self.used -= len(old)

    def discard(self, digest: str) -> None:
        data = self._entries.pop(digest, None)
        if data is not None:
            self.used -= len(data)


class StorageMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.corrupt = Counter(
            "meshcast_storage_corrupt_chunks",
            "Local chunk replicas that failed their hash (removed, then repaired)",
            registry=registry,
        )
        self.repaired = Counter(
            "meshcast_storage_repair_pushes",
            "Chunks and manifests pushed to owners that lacked them",
            ["kind"],
            registry=registry,
        )
        self.peer_errors = Counter(
            "meshcast_storage_peer_errors", "Failed peer transfers", registry=registry
        )
        self.collected = Counter(
            "meshcast_storage_gc_bytes",
            "Bytes of chunks deleted because no object, pin or upload refers to them",
            registry=registry,
        )


class Cluster:
    def __init__(
        self,
        store: BlobStore,
        ring: PeerRing,
        client: httpx.AsyncClient,
        secret: str,
        replicas: int,
        metrics: StorageMetrics,
        chunk_cache: int = 0,
    ) -> None:
        self.store = store
        self.ring = ring
        self.client = client
        self.secret = secret
        self.replicas = replicas
        self.metrics = metrics
        self.self_url = ring.self_url
        # Verified chunks recently read: content-addressed, so never stale.
        self.chunk_cache = ChunkCache(chunk_cache)
        # Chunks no reference held at the last garbage collection pass.
        self._unreferenced: set[str] = set()

    # ---- placement --------------------------------------------------------------------

    def chunk_owners(self, digest: str) -> list[str]:
        return self.ring.owners(f"c:{digest}", self.replicas)

    def manifest_owners(self, manifest: Manifest) -> list[str]:
        if manifest.ns == NS_BUCKET:
            return [self.self_url, *self.ring.alive_peers()]
        return self.ring.owners(f"m:{manifest.id}", self.replicas)

    def _headers(self) -> dict[str, str]:
        return {SECRET_HEADER: self.secret}

    def _peer_failed(self, peer: str, exc: Exception) -> None:
        self.metrics.peer_errors.inc()
        if isinstance(exc, httpx.TransportError):
            self.ring.mark_down(peer, f"storage: {exc!r}")
        else:
            log.warning("storage %s: peer %s: %s", self.self_url, peer, exc)

    # ---- chunks -----------------------------------------------------------------------

    async def put_chunk(self, digest: str, data: bytes) -> None:
        """Write to every live owner; succeed if at least one has it on disk."""
        owners = self.chunk_owners(digest)
        results = await asyncio.gather(*(self._put_chunk_on(o, digest, data) for o in owners))
        if not any(results):
            raise Unavailable(f"no owner of chunk {digest} accepted it")

    async def _put_chunk_on(self, node: str, digest: str, data: bytes) -> bool:
        if node == self.self_url:
            await asyncio.to_thread(self.store.write_chunk, digest, data)
            return True
        try:
            r = await self.client.put(
                f"{node}/_storage/chunk/{digest}",
                content=data,
                headers=self._headers(),
                timeout=_TIMEOUT,
            )
            r.raise_for_status()
        except httpx.HTTPError as exc:
            self._peer_failed(node, exc)
            return False
        return True

    async def get_chunk(self, digest: str) -> bytes:
        """The chunk, verified; a missing or corrupted local replica is refilled from a
        peer when this node is one of its owners."""
        cached = self.chunk_cache.get(digest)
        if cached is not None:
            return cached
        data = await self._get_chunk(digest)
        self.chunk_cache.put(digest, data)
        return data

    async def _get_chunk(self, digest: str) -> bytes:
        try:
            data = await asyncio.to_thread(self.store.read_chunk, digest)
        except CorruptChunk as exc:
            self.metrics.corrupt.inc()
            log.warning("storage %s: %s", self.self_url, exc)
            data = None
        if data is not None:
            return data
        owners = self.chunk_owners(digest)
        # Owners first, then anyone: after membership changes a replica may sit elsewhere.
        candidates = [*owners, *(p for p in self.ring.alive_peers() if p not in owners)]
        for node in candidates:
            if node == self.self_url:
                continue
            try:
                r = await self.client.get(
                    f"{node}/_storage/chunk/{digest}", headers=self._headers(), timeout=_TIMEOUT
                )
            except httpx.HTTPError as exc:
                self._peer_failed(node, exc)
                continue
            if r.status_code != 200:
                continue
            data = r.content
            actual = await asyncio.to_thread(_sha256_hex, data)
            if actual != digest:
                continue  # the peer's copy is bad too (it checks before sending; belt and braces)
            if self.self_url in owners:
                await asyncio.to_thread(self.store.write_chunk, digest, data)
                self.metrics.repaired.labels("chunk").inc()
            return data
        raise Unavailable(f"no live replica of chunk {digest}")

    async def read(self, manifest: Manifest, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of an object, one verified chunk at a time."""
        offset = 0
        for digest, size in manifest.chunks:
            if offset >= end:
                break
            if offset + size > start:
                data = await self.get_chunk(digest)
                yield data[max(0, start - offset) : min(size, end - offset)]
            offset += size

    # ---- manifests --------------------------------------------------------------------

    async def put_manifest(self, manifest: Manifest) -> None:
        owners = self.manifest_owners(manifest)
        results = await asyncio.gather(*(self._put_manifest_on(o, manifest) for o in owners))
        if not any(results):
            raise Unavailable("no owner accepted the object manifest")

    async def _put_manifest_on(self, node: str, manifest: Manifest) -> bool:
        if node == self.self_url:
            await asyncio.to_thread(self.store.put_manifest, manifest)
            return True
        try:
            r = await self.client.put(
                f"{node}/_storage/manifest/{manifest.id}",
                json=manifest.to_json(),
                headers=self._headers(),
                timeout=_TIMEOUT,
            )
            r.raise_for_status()
        except httpx.HTTPError as exc:
            self._peer_failed(node, exc)
            return False
        return True

    async def get_manifest(self, probe: Manifest) -> Manifest | None:
        """The newest live (not deleted) version among the owners of ``probe``'s id."""
        mid = probe.id
        best = self.store.get_manifest(mid)
        owners = [o for o in self.manifest_owners(probe) if o != self.self_url]
        if probe.ns == NS_BUCKET:
            owners = []  # every node holds every bucket record
        for found in await asyncio.gather(*(self._get_manifest_from(o, mid) for o in owners)):
            if found is not None and found.newer_than(best):
                best = found
        if best is None or best.deleted:
            return None
        return best

    async def _get_manifest_from(self, node: str, mid: str) -> Manifest | None:
        try:
            r = await self.client.get(
                f"{node}/_storage/manifest/{mid}", headers=self._headers(), timeout=_TIMEOUT
            )
        except httpx.HTTPError as exc:
            self._peer_failed(node, exc)
            return None
        if r.status_code != 200:
            return None
        return Manifest.from_json(r.json())

    async def list_manifests(self, ns: str, bucket: str, prefix: str) -> list[Manifest]:
        """Newest live manifests of a namespace/bucket under ``prefix``, from every node
        (each holds only its share), sorted by key."""
        merged: dict[str, Manifest] = {}

        def add(items: Iterable[Manifest]) -> None:
            for m in items:
                if m.newer_than(merged.get(m.id)):
                    merged[m.id] = m

        add(self.local_matching(ns, bucket, prefix))
        peers = self.ring.alive_peers()
        for peer, found in zip(
            peers,
            await asyncio.gather(*(self._list_from(p, ns, bucket, prefix) for p in peers)),
            strict=True,
        ):
            if found is None:
                raise Unavailable(f"cannot list: peer {peer} did not answer")
            add(found)
        return sorted((m for m in merged.values() if not m.deleted), key=lambda m: m.key)

    def local_matching(self, ns: str, bucket: str, prefix: str) -> list[Manifest]:
        return [
            m
            for m in self.store.manifests.values()
            if m.ns == ns and m.bucket == bucket and m.key.startswith(prefix)
        ]

    async def _list_from(
        self, node: str, ns: str, bucket: str, prefix: str
    ) -> list[Manifest] | None:
        try:
            r = await self.client.get(
                f"{node}/_storage/list",
                params={"ns": ns, "bucket": bucket, "prefix": prefix},
                headers=self._headers(),
                timeout=_TIMEOUT,
            )
            r.raise_for_status()
        except httpx.HTTPError as exc:
            self._peer_failed(node, exc)
            return None
        return [Manifest.from_json(m) for m in r.json()["manifests"]]

    # ---- repair -----------------------------------------------------------------------

    async def repair_once(self) -> int:
        """Push every local chunk and manifest to the live owners that lack it; returns the
        number of pushes. Corrupted local chunks found on the way are refetched."""
        wanted: dict[str, tuple[list[str], dict[str, int]]] = {
            p: ([], {}) for p in self.ring.alive_peers()
        }
        for digest in list(self.store.chunks):
            for owner in self.chunk_owners(digest):
                if owner in wanted:
                    wanted[owner][0].append(digest)
        for manifest in list(self.store.manifests.values()):
            for owner in self.manifest_owners(manifest):
                if owner in wanted:
                    wanted[owner][1][manifest.id] = manifest.version
        pushes = 0
        for peer, (chunks, manifests) in wanted.items():
            try:
                r = await self.client.post(
                    f"{peer}/_storage/missing",
                    json={"chunks": chunks, "manifests": manifests},
                    headers=self._headers(),
                    timeout=_TIMEOUT,
                )
                r.raise_for_status()
                missing = r.json()
            except httpx.HTTPError as exc:
                self._peer_failed(peer, exc)
                continue
            for digest in missing["chunks"]:
                try:
                    data = await asyncio.to_thread(self.store.read_chunk, digest)
                except CorruptChunk as exc:
                    self.metrics.corrupt.inc()
                    log.warning("storage %s: %s", self.self_url, exc)
                    continue
                if data is not None and await self._put_chunk_on(peer, digest, data):
                    self.metrics.repaired.labels("chunk").inc()
                    pushes += 1
            for mid in missing["manifests"]:
                held = self.store.get_manifest(mid)
                if held is not None and await self._put_manifest_on(peer, held):
                    self.metrics.repaired.labels("manifest").inc()
                    pushes += 1
        return pushes

    async def scrub_once(self) -> list[str]:
        """Re-hash every local chunk; refill corrupted ones from peers."""
        bad = await asyncio.to_thread(self.store.scrub)
        for digest in bad:
            self.metrics.corrupt.inc()
            log.warning("storage %s: scrub found chunk %s corrupted", self.self_url, digest)
            try:
                await self._get_chunk(digest)  # not the cache: the disk copy must come back
            except Unavailable as exc:
                log.error("storage %s: %s", self.self_url, exc)
        return bad

    async def gc_once(self, grace: float) -> int:
        """Delete local chunks that nothing refers to; returns the bytes freed.

        A chunk goes only when it is unreferenced in two passes in a row (a manifest being
        written between the listing and the check cannot lose its chunks), older than
        ``grace`` (uploads write chunks before their manifest), and when every peer of the
        ring is alive and answered: a dead manifest owner could hold the only reference."""
        peers = self.ring.peers
        if set(self.ring.alive_peers()) != set(peers):
            log.info("storage %s: garbage collection skipped: a peer is down", self.self_url)
            return 0
        newest: dict[str, Manifest] = dict(self.store.manifests)
        referenced = await asyncio.to_thread(self.store.upload_chunks)
        for peer, found in zip(
            peers, await asyncio.gather(*(self._references_from(p) for p in peers)), strict=True
        ):
            if found is None:
                log.info("storage %s: garbage collection skipped: %s did not answer",
                         self.self_url, peer)  # fmt: skip
                return 0
            manifests, uploads = found
            referenced |= uploads
            for m in manifests:
                if m.newer_than(newest.get(m.id)):
                    newest[m.id] = m
        for m in newest.values():
            if not m.deleted:
                referenced.update(d for d, _ in m.chunks)
        unreferenced = {d for d in self.store.chunks if d not in referenced}
        doomed, self._unreferenced = unreferenced & self._unreferenced, unreferenced
        cutoff = time.time() - grace
        freed = 0
        for digest in doomed:
            freed += await asyncio.to_thread(self.store.remove_chunk, digest, cutoff)
            self.chunk_cache.discard(digest)
        if freed:
            self.metrics.collected.inc(freed)
            log.info("storage %s: garbage collection freed %d bytes", self.self_url, freed)
        return freed

    async def _references_from(self, node: str) -> tuple[list[Manifest], set[str]] | None:
        try:
            r = await self.client.get(
                f"{node}/_storage/references", headers=self._headers(), timeout=_TIMEOUT
            )
            r.raise_for_status()
            body = r.json()
            manifests = [Manifest.from_json(m) for m in body["manifests"]]
            return manifests, {str(d) for d in body["uploads"]}
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, httpx.HTTPError):
                self._peer_failed(node, exc)
            return None

    async def loop(
        self, every: float, job: Callable[[], Any], on_membership_change: bool = False
    ) -> None:
        """Run ``job`` every ``every`` seconds; with ``on_membership_change`` also as soon as
        the set of live peers changes (a node died or came back: owners moved)."""
        members = set(self.ring.alive_peers())
        while True:
            deadline = time.monotonic() + every
            while time.monotonic() < deadline:
                await asyncio.sleep(min(0.5, every))
                now_members = set(self.ring.alive_peers())
                if on_membership_change and now_members != members:
                    break
            members = set(self.ring.alive_peers())
            started = time.monotonic()
            try:
                await job()
            except Exception:
                log.exception("storage %s: background job failed", self.self_url)
            log.debug("storage job took %.3f s", time.monotonic() - started)

    # ---- internal routes ----------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/_storage/chunk/{digest}", self._chunk, methods=["GET", "PUT"]),
            Route("/_storage/manifest/{mid}", self._manifest, methods=["GET", "PUT"]),
            Route("/_storage/list", self._list, methods=["GET"]),
            Route("/_storage/missing", self._missing, methods=["POST"]),
            Route("/_storage/references", self._references, methods=["GET"]),
        ]

    def _authorized(self, request: Request) -> bool:
        return hmac.compare_digest(request.headers.get(SECRET_HEADER, ""), self.secret)

    async def _chunk(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": "forbidden"}, 403)
        digest = request.path_params["digest"]
        try:
            self.store.chunk_path(digest)
        except ValueError:
            return JSONResponse({"error": "bad digest"}, 400)
        if request.method == "PUT":
            body = await read_body(request, MAX_PEER_BODY)
            try:
                await asyncio.to_thread(self.store.write_chunk, digest, body)
            except CorruptChunk as exc:
                return JSONResponse({"error": str(exc)}, 400)
            return Response(status_code=204)
        try:
            data = await asyncio.to_thread(self.store.read_chunk, digest)
        except CorruptChunk as exc:
            self.metrics.corrupt.inc()
            log.warning("storage %s: %s", self.self_url, exc)
            data = None
        if data is None:
            return JSONResponse({"error": "no such chunk"}, 404)
        return Response(data, media_type="application/octet-stream")

    async def _manifest(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": "forbidden"}, 403)
        mid = request.path_params["mid"]
        if request.method == "PUT":
            manifest = Manifest.from_json(await read_json(request, MAX_PEER_BODY))
            if manifest.id != mid:
                return JSONResponse({"error": "manifest id mismatch"}, 400)
            await asyncio.to_thread(self.store.put_manifest, manifest)
            return Response(status_code=204)
        found = self.store.get_manifest(mid)
        if found is None:
            return JSONResponse({"error": "no such manifest"}, 404)
        return JSONResponse(found.to_json())

    async def _list(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": "forbidden"}, 403)
        q = request.query_params
        found = self.local_matching(q.get("ns", ""), q.get("bucket", ""), q.get("prefix", ""))
        return JSONResponse({"manifests": [m.to_json() for m in found]})

    async def _references(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": "forbidden"}, 403)
        uploads = await asyncio.to_thread(self.store.upload_chunks)
        manifests = [m.to_json() for m in list(self.store.manifests.values())]
        return JSONResponse({"manifests": manifests, "uploads": sorted(uploads)})

    async def _missing(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": "forbidden"}, 403)
        body = await read_json(request, MAX_PEER_BODY)
        chunks = [d for d in body["chunks"] if not self.store.has_chunk(d)]
        manifests = []
        for mid, version in body["manifests"].items():
            have = self.store.get_manifest(mid)
            if have is None or have.version < version:
                manifests.append(mid)
        return JSONResponse({"chunks": chunks, "manifests": manifests})
