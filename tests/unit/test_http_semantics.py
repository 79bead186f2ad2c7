from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.cache import CachedObject, TieredCache
from edge.http_semantics import RangeNotSatisfiable, etag_matches, freshness, parse_range
from edge.policies import LruPolicy
from edge.ring import PeerRing, rendezvous_owner
from meshcast.paths import parse_media_path


def test_parse_range() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 10)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=50-500", 100) == (50, 100)
    assert parse_range("bytes=0-1,5-6", 100) is None  # multi-range: whole body
    assert parse_range("items=0-1", 100) is None
    for bad in ("bytes=100-", "bytes=5-2", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(bad, 100)


@given(st.text(max_size=40), st.integers(1, 10_000))
def test_fuzz_parse_range(header: str, size: int) -> None:
    try:
        span = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if span is not None:
        assert 0 <= span[0] < span[1] <= size


def test_etag_and_freshness() -> None:
    assert etag_matches('"a", W/"b"', '"b"')
    assert etag_matches("*", '"x"')
    assert not etag_matches('"a"', '"b"')
    assert freshness("public, max-age=1", immutable_default=False, default_ttl=9).ttl == 1
    assert freshness("public, max-age=31536000, immutable", immutable_default=False,
                     default_ttl=9).ttl is None  # fmt: skip
    assert not freshness("no-store", immutable_default=True, default_ttl=9).store
    assert freshness(None, immutable_default=True, default_ttl=9).ttl is None


def test_media_path_whitelist() -> None:
    ok = parse_media_path("/live/cam1/720p/897875360.m4s")
    assert ok is not None and ok.name == "cam1" and ok.content_type == "video/iso.segment"
    assert parse_media_path("/live/cam1/audio/init.mp4").content_type == "audio/mp4"  # type: ignore[union-attr]
    for bad in (
        "/live/../keys.json",
        "/live/cam1/../../etc/passwd",
        "/live/cam1/720p/..%2f0.m4s",
        "/live/cam1/720p/0.m4s\x00",
        "/live//etc/passwd",
        "/live/.hidden/master.m3u8",
        "/live/cam1/720p/index.m3u8/x",
        "/etc/passwd",
        "/vod/a1/../poster.jpg",
        "/vod/a1/720p/poster.jpg",
        "/vod/a1/poster.jpeg",
        "/live/cam1/thumbnails.jpg",  # seek-bar sprites are VOD-only
        "/live/cam1/thumbnails.vtt",
    ):
        assert parse_media_path(bad) is None, bad


def test_vod_media_paths() -> None:
    poster = parse_media_path("/vod/0123abcd/poster.jpg")
    assert poster is not None and poster.kind == "vod" and poster.content_type == "image/jpeg"
    assert not poster.is_manifest
    sprite = parse_media_path("/vod/0123abcd/thumbnails.jpg")
    assert sprite is not None and sprite.relative == "thumbnails.jpg"
    vtt = parse_media_path("/vod/0123abcd/thumbnails.vtt")
    assert vtt is not None and vtt.content_type == "text/vtt"
    seg = parse_media_path("/vod/0123abcd/1080p/0.m4s")
    assert seg is not None and seg.rendition == "1080p" and seg.relative == "1080p/0.m4s"


def obj(key: str, size: int) -> CachedObject:
    return CachedObject(key, size, "video/mp4", None, None, 0.0, None, body=b"x" * size)


async def test_tiered_cache_lru_and_demotion(tmp_path: object) -> None:
    from pathlib import Path

    cache = TieredCache(mem_bytes=300, disk_bytes=1000, disk_dir=Path(str(tmp_path)))
    for name in ("a", "b", "c"):
        cache.put(obj(name, 100))
    cache.get("a")  # a is now most recent: b is the LRU victim
    cache.put(obj("d", 100))
    await cache.close()
    assert set(cache.memory.entries) == {"a", "c", "d"}
    assert set(cache.disk.entries) == {"b"}  # demoted, not lost
    on_disk = cache.get("b")
    assert on_disk is not None and on_disk.body is None and on_disk.path is not None
    assert on_disk.path.read_bytes() == b"x" * 100
    assert cache.memory.used == 300 and cache.disk.used == 100
    assert not cache.cacheable_size(251)  # larger than a quarter of the biggest tier: pass


def test_lru_policy_order() -> None:
    lru = LruPolicy()
    for k in "abc":
        lru.inserted(k, 1)
    lru.accessed("a")
    assert lru.victim() == "b"
    lru.removed("b")
    assert lru.victim() == "c"


def test_rendezvous_moves_only_the_dead_nodes_keys() -> None:
    nodes = ["http://e1", "http://e2", "http://e3"]
    keys = [f"/live/x/720p/{n}.m4s" for n in range(300)]
    before = {k: rendezvous_owner(k, nodes) for k in keys}
    after = {k: rendezvous_owner(k, nodes[:2]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "http://e3" for k in moved)
    share = sum(1 for k in keys if before[k] == "http://e3") / len(keys)
    assert 0.2 < share < 0.46  # roughly a third each


def test_ring_skips_a_down_peer() -> None:
    ring = PeerRing("http://e1", ["http://e2"], down_for=60)
    keys = [f"/k{n}" for n in range(50)]
    assert {ring.owner(k) for k in keys} == {"http://e1", "http://e2"}
    ring.mark_down("http://e2", "test")
    assert {ring.owner(k) for k in keys} == {"http://e1"}
    ring.mark_up("http://e2")
    assert "http://e2" in {ring.owner(k) for k in keys}


def test_access_log_rotates_with_header(tmp_path: object) -> None:
    from pathlib import Path

    from edge.accesslog import HEADER, AccessLog

    path = Path(str(tmp_path)) / "access.csv"
    log = AccessLog(path, max_bytes=200, backups=2)
    for _ in range(20):
        log.write("10.0.0.1", "/live/x/360p/1.m4s", 1234)
    log.close()
    files = [path, path.with_name("access.csv.1"), path.with_name("access.csv.2")]
    assert all(f.read_text().startswith(HEADER + "\n") for f in files)
    assert not path.with_name("access.csv.3").exists()
    assert files[1].read_text().splitlines()[-1].split(",")[1:] == [
        "10.0.0.1", "/live/x/360p/1.m4s", "1234"
    ]  # fmt: skip
