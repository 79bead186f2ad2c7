"""Edge prefetcher: fetch the segment a viewer will ask for next before it asks.

Prediction (the "next segment of the same rendition" policy of ``meshcast bench cache``):
- a viewer fetched segment N of a rendition -> N+1, when the rendition's latest playlist
  lists it (VOD, or live behind the live edge);
- a rendition someone watched in the last ``watch_s`` seconds is a *watched* rendition: the
  prefetcher refreshes its live playlist itself once per ``poll_s`` and fetches segments
  newer than any viewer has requested, so the viewer's own playlist refresh finds them
  cached (a HIT instead of a MISS or a wait on a running fill at the live edge).

Prefetches are low priority: at most ``max_inflight`` at once, none while viewer fills are
piling up, and a token bucket caps them at ``budget`` bytes per second. They go through the
edge's normal single-flight fill (owner peer, then origin), so a viewer asking meanwhile
joins the fill instead of fetching twice. A prefetched object requested later is a
prefetch hit; one nobody requested within ``waste_after_s`` counts as waste.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

_SEGMENT: Final = re.compile(r"(?P<dir>/(?:live|vod)/[^/]+/[^/]+/)(?P<seq>[0-9]{1,12})\.m4s")
_PLAYLIST_SEGMENT: Final = re.compile(rb"^([0-9]{1,12})\.m4s\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class PrefetchConfig:
    budget: int = 16 * 1024 * 1024  # bytes per second
    max_inflight: int = 2
    watch_s: float = 10.0
    poll_s: float = 0.5  # a quarter of a segment: ahead of most viewers' refreshes
    waste_after_s: float = 60.0
    busy_fills: int = 16  # viewer fills in flight above which prefetching pauses
    per_playlist: int = 2  # newest unrequested segments fetched per live playlist


@dataclass(slots=True)
class _Rendition:
    listed: frozenset[int] = frozenset()
    live: bool = False
    watched_at: float = -1e18
    highest: int = -1  # highest segment a viewer requested
    segment_size: int = 0  # size of the last segment seen: the budget's estimate


@dataclass
class PrefetchMetrics:
    registry: CollectorRegistry
    fetched: Counter = field(init=False)
    fetched_bytes: Counter = field(init=False)
    hits: Counter = field(init=False)
    hit_bytes: Counter = field(init=False)
    wasted: Counter = field(init=False)
    wasted_bytes: Counter = field(init=False)
    skipped: Counter = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"meshcast_edge_prefetch_{name}", doc, labels, registry=r)

        self.fetched = counter("fetches", "Objects prefetched into the cache")
        self.fetched_bytes = counter("bytes", "Bytes fetched upstream by the prefetcher")
        self.hits = counter("hits", "Prefetched objects later requested by a viewer")
        self.hit_bytes = counter("hit_bytes", "Size of prefetched objects later requested")
        self.wasted = counter("wasted", "Prefetched objects nobody requested in time")
        self.wasted_bytes = counter("wasted_bytes", "Bytes of prefetched objects never used")
        self.skipped = counter("skipped", "Prefetches not made", ("reason",))


class Prefetcher:
    def __init__(
        self,
        config: PrefetchConfig,
        fetch: Callable[[str, bool], Awaitable[int | None]],
        present: Callable[[str], bool],
        viewer_fills: Callable[[], int],
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        # Fills one object into the cache (refresh: even if a fresh copy is cached); its
        # size, None if it failed.
        self._fetch = fetch
        self._present = present  # cached or being filled
        self._viewer_fills = viewer_fills
        self._clock = clock
        self.metrics = PrefetchMetrics(registry)
        self._renditions: dict[str, _Rendition] = {}
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unused: dict[str, tuple[float, int]] = {}  # prefetched, not yet requested
        self._tokens = 2.0 * config.budget  # the bucket starts full (2 s of budget)
        self._refilled = clock()

    # ---- what viewers do --------------------------------------------------------------

    def on_request(self, path: str, size: int) -> None:
        """A viewer (not a peer) requested ``path``; ``size`` is the body size."""
        used = self._unused.pop(path, None)
        if used is not None:
            self.metrics.hits.inc()
            self.metrics.hit_bytes.inc(used[1])
        match = _SEGMENT.fullmatch(path)
        if match is None:
            return
        rendition = self._renditions.setdefault(match["dir"], _Rendition())
        seq = int(match["seq"])
        rendition.watched_at = self._clock()
        rendition.highest = max(rendition.highest, seq)
        rendition.segment_size = size or rendition.segment_size
        if seq + 1 in rendition.listed:
            self._schedule(f"{match['dir']}{seq + 1}.m4s", rendition)

    def on_playlist(self, path: str, body: bytes) -> None:
        """A fresh copy of a rendition playlist (``…/RENDITION/index.m3u8``) was filled."""
        directory = path.removesuffix("index.m3u8")
        rendition = self._renditions.setdefault(directory, _Rendition())
        rendition.listed = frozenset(int(m) for m in _PLAYLIST_SEGMENT.findall(body))
        rendition.live = b"#EXT-X-ENDLIST" not in body
        if not self._watched(rendition) or rendition.highest < 0:
            return
        newer = sorted(s for s in rendition.listed if s > rendition.highest)
        for seq in newer[: self.config.per_playlist]:
            self._schedule(f"{directory}{seq}.m4s", rendition)

    # ---- scheduling -------------------------------------------------------------------

    def _watched(self, rendition: _Rendition) -> bool:
        return self._clock() - rendition.watched_at <= self.config.watch_s

    def _schedule(self, key: str, rendition: _Rendition) -> None:
        if key in self._inflight or key in self._unused or self._present(key):
            return
        if len(self._inflight) >= self.config.max_inflight:
            self.metrics.skipped.labels("inflight").inc()
            return
        if self._viewer_fills() > self.config.busy_fills:
            self.metrics.skipped.labels("busy").inc()
            return
        now = self._clock()
        burst = 2.0 * self.config.budget
        self._tokens = min(burst, self._tokens + (now - self._refilled) * self.config.budget)
        self._refilled = now
        estimate = rendition.segment_size
        if self._tokens < max(estimate, 1):
            self.metrics.skipped.labels("budget").inc()
            return
        self._tokens -= estimate
        self._inflight.add(key)
        task = asyncio.get_running_loop().create_task(self._prefetch(key, estimate))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prefetch(self, key: str, estimate: int) -> None:
        try:
            size = await self._fetch(key, False)
        except Exception:
            log.exception("edge prefetch of %s failed", key)
            size = None
        finally:
            self._inflight.discard(key)
        self._tokens += estimate - (size or 0)  # settle the estimate against the real size
        if size is None:
            self.metrics.skipped.labels("failed").inc()
            return
        self.metrics.fetched.inc()
        self.metrics.fetched_bytes.inc(size)
        self._unused[key] = (self._clock(), size)

    # ---- background: live playlists of watched renditions, waste accounting -----------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_s)
            self.expire()
            for directory, rendition in list(self._renditions.items()):
                if rendition.live and self._watched(rendition):
                    # Refreshing through the edge's own fill path calls on_playlist, and
                    # viewers then get the newer playlist from the cache.
                    with contextlib.suppress(Exception):
                        await self._fetch(f"{directory}index.m3u8", True)

    def expire(self) -> None:
        now = self._clock()
        for key, (at, size) in list(self._unused.items()):
            if now - at > self.config.waste_after_s:
                del self._unused[key]
                self.metrics.wasted.inc()
                self.metrics.wasted_bytes.inc(size)
        for directory, rendition in list(self._renditions.items()):
            if now - rendition.watched_at > 10 * self.config.watch_s:
                del self._renditions[directory]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
