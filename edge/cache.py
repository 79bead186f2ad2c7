"""Byte-bounded two-tier object cache: memory, then disk (aiofiles).

Entries are whole, verified objects (a fill that failed is never stored). Eviction is a
pluggable policy; LRU is the default. An object evicted from memory is demoted to disk when
a disk tier exists, and dropped from disk by the disk tier's own policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles
import aiofiles.os

from edge.policies import POLICIES, EvictionPolicy, LruPolicy

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CachedObject:
    key: str
    size: int
    content_type: str
    etag: str | None
    last_modified: str | None
    stored_at: float
    # None: immutable (fresh until evicted).
    expires_at: float | None
    body: bytes | None = None  # in memory
    path: Path | None = None  # on disk
    # Response headers of a plain HIT, built once (the edge's fast path).
    hit_headers: list[tuple[bytes, bytes]] | None = None

    def fresh(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    @property
    def age(self) -> int:
        return max(0, int(time.time() - self.stored_at))


@dataclass
class Tier:
    name: str
    capacity: int
    policy: EvictionPolicy = field(default_factory=LruPolicy)
    entries: dict[str, CachedObject] = field(default_factory=dict)
    used: int = 0

    def add(self, obj: CachedObject) -> list[CachedObject]:
        """Evict until ``obj`` fits, then insert it (the order the policies are defined
        in: a new object is never its own eviction candidate). Returns the evicted."""
        evicted = []
        while self.used + obj.size > self.capacity and self.entries:
            victim = self.remove(self.policy.victim())
            if victim is not None:
                evicted.append(victim)
        self.entries[obj.key] = obj
        self.used += obj.size
        self.policy.inserted(obj.key, obj.size)
        return evicted

    def remove(self, key: str) -> CachedObject | None:
        obj = self.entries.pop(key, None)
        if obj is not None:
            self.used -= obj.size
            self.policy.removed(key)
        return obj


class TieredCache:
    def __init__(
        self,
        mem_bytes: int,
        disk_bytes: int = 0,
        disk_dir: Path | None = None,
        policy: str | Callable[[int], EvictionPolicy] = "lru",
    ) -> None:
        if disk_bytes and disk_dir is None:
            raise ValueError("a disk tier needs a directory")
        make = POLICIES[policy] if isinstance(policy, str) else policy
        self.memory = Tier("memory", mem_bytes, make(mem_bytes))
        self.disk = Tier("disk", disk_bytes, make(disk_bytes))
        self.disk_dir = disk_dir
        self.max_object = max(mem_bytes, disk_bytes) // 4 or 0
        self._tasks: set[asyncio.Task[None]] = set()
        if disk_dir is not None:
            disk_dir.mkdir(parents=True, exist_ok=True)
            for stale in disk_dir.glob("*.obj"):  # a restart starts cold: no index on disk
                stale.unlink(missing_ok=True)

    def get(self, key: str) -> CachedObject | None:
        obj = self.memory.entries.get(key)
        if obj is not None:
            self.memory.policy.accessed(key)
            return obj
        obj = self.disk.entries.get(key)
        if obj is not None:
            self.disk.policy.accessed(key)
        return obj

    def peek(self, key: str) -> CachedObject | None:
        """The cached object without counting an access (the policies must see only
        viewers' requests)."""
        return self.memory.entries.get(key) or self.disk.entries.get(key)

    def cacheable_size(self, size: int) -> bool:
        return 0 < size <= self.max_object

    def put(self, obj: CachedObject) -> None:
        """Store a complete object in memory; what memory evicts moves to disk."""
        if not self.cacheable_size(obj.size):
            return
        self.memory.remove(obj.key)
        old = self.disk.remove(obj.key)
        if old is not None and old.path is not None:
            self._spawn(self._unlink(old.path))
        if self.memory.capacity >= obj.size:
            for evicted in self.memory.add(obj):
                self._demote(evicted)
        else:
            self._demote(obj)

    def _demote(self, obj: CachedObject) -> None:
        if self.disk_dir is None or self.disk.capacity < obj.size or obj.body is None:
            return
        path = self.disk_dir / (hashlib.sha256(obj.key.encode()).hexdigest() + ".obj")
        body = obj.body
        self._spawn(self._write(obj, path, body))

    async def _write(self, obj: CachedObject, path: Path, body: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        try:
            async with aiofiles.open(tmp, "wb") as f:
                await f.write(body)
            await aiofiles.os.replace(tmp, path)
        except OSError as exc:
            log.warning("edge cache: could not write %s to disk: %s", obj.key, exc)
            with contextlib.suppress(OSError):
                await aiofiles.os.remove(tmp)
            return
        if obj.key in self.memory.entries or obj.key in self.disk.entries:
            await self._unlink(path)  # re-filled meanwhile: the newer copy wins
            return
        obj.body, obj.path = None, path
        for evicted in self.disk.add(obj):
            if evicted.path is not None:
                await self._unlink(evicted.path)

    async def _unlink(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            await aiofiles.os.remove(path)

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def invalidate(self, key: str) -> None:
        self.memory.remove(key)
        obj = self.disk.remove(key)
        if obj is not None and obj.path is not None:
            self._spawn(self._unlink(obj.path))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def read_range(
    obj: CachedObject, start: int, end: int, chunk: int = 256 * 1024
) -> AsyncIterator[bytes]:
    """Yield bytes [start, end) of a cached object from memory or disk."""
    if obj.body is not None:
        yield obj.body[start:end]
        return
    assert obj.path is not None
    async with aiofiles.open(obj.path, "rb") as f:
        await f.seek(start)
        remaining = end - start
        while remaining > 0:
            data = await f.read(min(chunk, remaining))
            if not data:
                raise OSError(f"{obj.path} shorter than expected")
            remaining -= len(data)
            yield data
