"""One edge's share of the storage: content-addressed chunks and object manifests on disk.

Chunks are named by their SHA-256, so a replica is verified by re-hashing it and is never
served when the hash differs. Manifests (what an object or pin is made of) are small JSON
files named by a hash of their name; user keys never become paths. Blocking calls: run them
in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshcast.files import atomic_write

NS_OBJECT = "s3"
NS_BUCKET = "bucket"
NS_PIN = "pin"


class CorruptChunk(Exception):
    """A local chunk no longer hashes to its name (it was removed)."""


def manifest_id(ns: str, bucket: str, key: str) -> str:
    return hashlib.sha256(f"{ns}\0{bucket}\0{key}".encode()).hexdigest()


@dataclass(slots=True)
class Manifest:
    ns: str
    bucket: str
    key: str
    # Nanoseconds since the epoch of the write; the newest version wins everywhere
    # (last-writer-wins), ties broken by the writer's URL.
    version: int
    writer: str
    deleted: bool = False
    size: int = 0
    etag: str = ""
    content_type: str = "application/octet-stream"
    # (sha256 hex, size) per chunk, in order.
    chunks: list[tuple[str, int]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    sha256: str = ""  # of the whole content (pins; single-part objects)

    @property
    def id(self) -> str:
        return manifest_id(self.ns, self.bucket, self.key)

    def newer_than(self, other: Manifest | None) -> bool:
        return other is None or (self.version, self.writer) > (other.version, other.writer)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Manifest:
        raw = dict(raw)
        raw["chunks"] = [(str(h), int(n)) for h, n in raw.get("chunks", [])]
        return cls(**raw)


def _atomic_write(path: Path, data: bytes) -> None:
    # Acknowledged means on disk: the PUT is answered only after this returns.
    atomic_write(path, data, durable=True)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunk_dir = root / "chunks"
        self.manifest_dir = root / "manifests"
        self.upload_dir = root / "uploads"
        for d in (self.chunk_dir, self.manifest_dir, self.upload_dir):
            d.mkdir(parents=True, exist_ok=True)
        # digest -> size of the chunks held (the inventory storage proofs commit to).
        self.chunks: dict[str, int] = {
            p.name: p.stat().st_size for p in self.chunk_dir.glob("*/*") if len(p.name) == 64
        }
        self.manifests: dict[str, Manifest] = {}
        for path in self.manifest_dir.glob("*/*.json"):
            try:
                m = Manifest.from_json(json.loads(path.read_bytes()))
            except (ValueError, TypeError, KeyError):
                continue  # a torn file cannot exist (atomic writes); be lenient anyway
            self.manifests[m.id] = m

    # ---- chunks -----------------------------------------------------------------------

    def chunk_path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.chunk_dir / digest[:2] / digest

    def has_chunk(self, digest: str) -> bool:
        return digest in self.chunks

    def write_chunk(self, digest: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != digest:
            raise CorruptChunk(f"chunk body does not hash to {digest}")
        path = self.chunk_path(digest)
        if digest not in self.chunks or not path.exists():
            _atomic_write(path, data)
        self.chunks[digest] = len(data)

    def read_chunk(self, digest: str) -> bytes | None:
        """The verified chunk, None if absent; a corrupted copy is deleted, CorruptChunk."""
        path = self.chunk_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.chunks.pop(digest, None)
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            path.unlink(missing_ok=True)
            self.chunks.pop(digest, None)
            raise CorruptChunk(f"local replica of chunk {digest} is corrupted; removed")
        return data

    def remove_chunk(self, digest: str, older_than: float) -> int:
        """Delete a chunk written before ``older_than`` (unix time); its size, 0 if kept."""
        path = self.chunk_path(digest)
        try:
            if path.stat().st_mtime >= older_than:
                return 0
            size = self.chunks.pop(digest, 0)
            path.unlink()
        except FileNotFoundError:
            self.chunks.pop(digest, None)
            return 0
        return size

    def scrub(self) -> list[str]:
        """Re-hash every chunk; returns the digests of the corrupted ones (removed)."""
        bad = []
        for digest in list(self.chunks):
            try:
                self.read_chunk(digest)
            except CorruptChunk:
                bad.append(digest)
        return bad

    # ---- manifests --------------------------------------------------------------------

    def manifest_path(self, mid: str) -> Path:
        return self.manifest_dir / mid[:2] / f"{mid}.json"

    def put_manifest(self, manifest: Manifest) -> bool:
        """Store ``manifest`` unless we hold a newer one; True if stored."""
        current = self.manifests.get(manifest.id)
        if not manifest.newer_than(current):
            return False
        _atomic_write(self.manifest_path(manifest.id), json.dumps(manifest.to_json()).encode())
        self.manifests[manifest.id] = manifest
        return True

    def get_manifest(self, mid: str) -> Manifest | None:
        return self.manifests.get(mid)

    def get_manifest_by_key(self, ns: str, bucket: str, key: str) -> Manifest:
        found = self.manifests.get(manifest_id(ns, bucket, key))
        if found is None:
            raise KeyError(f"{ns}/{bucket}/{key}")
        return found

    # ---- multipart uploads (local to the edge that created them) ----------------------

    def upload_path(self, upload_id: str) -> Path:
        if not upload_id.isalnum() or len(upload_id) > 64:
            raise ValueError("bad upload id")
        return self.upload_dir / upload_id

    def upload_chunks(self) -> set[str]:
        """Chunks of the parts of multipart uploads still in progress here."""
        out: set[str] = set()
        for part in self.upload_dir.glob("*/part-*.json"):
            try:
                out.update(str(h) for h, _ in json.loads(part.read_bytes())["chunks"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # completed or aborted meanwhile
        return out

    def write_json(self, path: Path, value: dict[str, Any]) -> None:
        _atomic_write(path, json.dumps(value).encode())
