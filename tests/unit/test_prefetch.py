"""Prefetch decisions: what is fetched, budget, concurrency, hits and waste (no network:
the fetch callback stands in for the edge's fill)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from edge.prefetch import PrefetchConfig, Prefetcher


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Harness:
    def __init__(self, config: PrefetchConfig, size: int = 100) -> None:
        self.clock = Clock()
        self.fetched: list[str] = []
        self.cached: set[str] = set()
        self.size = size
        self.gate = asyncio.Event()
        self.gate.set()
        self.prefetcher = Prefetcher(
            config,
            self.fetch,
            lambda key: key in self.cached,
            lambda: 0,
            CollectorRegistry(),
            clock=self.clock,
        )

    async def fetch(self, key: str, refresh: bool) -> int | None:
        await self.gate.wait()
        self.fetched.append(key)
        self.cached.add(key)
        return self.size

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    def value(self, name: str, label: str | None = None) -> float:
        m = self.prefetcher.metrics
        counter = getattr(m, name)
        return float((counter.labels(label) if label else counter)._value.get())


def playlist(first: int, last: int, ended: bool) -> bytes:
    lines = ["#EXTM3U", '#EXT-X-MAP:URI="init.mp4"']
    for seq in range(first, last + 1):
        lines += ["#EXTINF:2.000,", f"{seq}.m4s"]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


async def test_vod_viewer_gets_the_next_segment_prefetched() -> None:
    h = Harness(PrefetchConfig(budget=10_000))
    p = h.prefetcher
    p.on_playlist("/vod/a/360p/index.m3u8", playlist(0, 4, ended=True))
    p.on_request("/vod/a/360p/0.m4s", 100)
    await h.settle()
    assert h.fetched == ["/vod/a/360p/1.m4s"]
    p.on_request("/vod/a/360p/1.m4s", 100)  # served from the prefetch
    await h.settle()
    assert h.fetched == ["/vod/a/360p/1.m4s", "/vod/a/360p/2.m4s"]
    assert h.value("hits") == 1 and h.value("hit_bytes") == 100
    p.on_request("/vod/a/360p/4.m4s", 100)  # the last one: nothing after it is listed
    await h.settle()
    assert len(h.fetched) == 2
    assert h.value("fetched_bytes") == 200


async def test_unlisted_or_other_rendition_segments_are_not_fetched() -> None:
    h = Harness(PrefetchConfig(budget=10_000))
    h.prefetcher.on_playlist("/vod/a/360p/index.m3u8", playlist(0, 4, ended=True))
    h.prefetcher.on_request("/vod/a/480p/0.m4s", 100)  # no 480p playlist seen
    h.prefetcher.on_request("/vod/a/360p/master.m3u8", 100)
    await h.settle()
    assert h.fetched == []


async def test_live_playlist_of_a_watched_rendition_prefetches_the_newest() -> None:
    h = Harness(PrefetchConfig(budget=10_000, per_playlist=2))
    p = h.prefetcher
    p.on_playlist("/live/s/720p/index.m3u8", playlist(10, 13, ended=False))
    await h.settle()
    assert h.fetched == []  # nobody watches it yet
    p.on_request("/live/s/720p/12.m4s", 100)  # -> 13 (listed)
    await h.settle()
    p.on_playlist("/live/s/720p/index.m3u8", playlist(12, 16, ended=False))
    await h.settle()
    # The two segments after the viewer's position (13 was already there).
    assert h.fetched == ["/live/s/720p/13.m4s", "/live/s/720p/14.m4s"]
    h.clock.t += 11  # no viewer for longer than watch_s
    p.on_playlist("/live/s/720p/index.m3u8", playlist(14, 18, ended=False))
    await h.settle()
    assert len(h.fetched) == 2


async def test_byte_budget_and_inflight_limit() -> None:
    h = Harness(PrefetchConfig(budget=150, max_inflight=1), size=100)
    p = h.prefetcher
    p.on_playlist("/vod/a/360p/index.m3u8", playlist(0, 20, ended=True))
    h.gate.clear()
    p.on_request("/vod/a/360p/0.m4s", 100)
    p.on_request("/vod/a/360p/5.m4s", 100)  # one already in flight
    assert h.value("skipped", "inflight") == 1
    h.gate.set()
    await h.settle()
    # Burst is 2 s of budget (300 bytes): two more fit, then the bucket is empty.
    for seq in (7, 9, 11):
        p.on_request(f"/vod/a/360p/{seq}.m4s", 100)
        await h.settle()
    assert h.value("skipped", "budget") == 1
    assert len(h.fetched) == 3
    h.clock.t += 1.0  # refills 150 bytes
    p.on_request("/vod/a/360p/13.m4s", 100)
    await h.settle()
    assert len(h.fetched) == 4


async def test_unused_prefetches_count_as_waste() -> None:
    h = Harness(PrefetchConfig(budget=10_000, waste_after_s=60))
    p = h.prefetcher
    p.on_playlist("/vod/a/360p/index.m3u8", playlist(0, 4, ended=True))
    p.on_request("/vod/a/360p/0.m4s", 100)
    await h.settle()
    h.clock.t += 30
    p.expire()
    assert h.value("wasted") == 0
    h.clock.t += 31
    p.expire()
    assert h.value("wasted") == 1 and h.value("wasted_bytes") == 100
    p.on_request("/vod/a/360p/1.m4s", 100)  # too late: not a prefetch hit any more
    assert h.value("hits") == 0


async def test_failed_prefetch_is_counted_and_refunded() -> None:
    h = Harness(PrefetchConfig(budget=100, max_inflight=4))
    p = h.prefetcher

    async def failing(key: str, refresh: bool) -> int | None:
        return None

    p._fetch = failing
    p.on_playlist("/vod/a/360p/index.m3u8", playlist(0, 9, ended=True))
    for seq in range(5):
        p.on_request(f"/vod/a/360p/{seq}.m4s", 100)
        await h.settle()
    assert h.value("skipped", "failed") == 5  # the estimate came back each time
    assert h.value("skipped", "budget") == 0
